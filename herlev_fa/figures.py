"""Every figure the tool writes: run evaluation, training, explanation and reproduction figures.

Each function takes plain arrays (or a finished result) and writes one PNG atomically; nothing
here trains or loads. Figures are drawn with matplotlib's object API (`Figure` on a
`FigureCanvasAgg`): no pyplot state, and the process's backend is never changed, so a notebook
that imports the package keeps its own.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter
from PIL import Image
from sklearn.metrics import ConfusionMatrixDisplay

from herlev_fa.atomic import atomic_path
from herlev_fa.data.items import printable
from herlev_fa.labels import short_name

if TYPE_CHECKING:
    from herlev_fa.explanation.attribution import Explanation


def _figure(**kwargs) -> Figure:
    """A figure on its own Agg canvas (files only), outside pyplot."""
    fig = Figure(**kwargs)
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, target: str | Path, dpi: int = 120) -> Path:
    """Write a figure as PNG atomically."""
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    return Path(target)


def _short(names: Sequence[str]) -> list[str]:
    return [short_name(n) for n in names]


# ---------------------------------------------------------------------------------------------
# a run: evaluation and training


def confusion_matrix_png(cm: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix [K, K] (rows true, columns predicted) with counts and row-normalised colour."""
    cm = np.asarray(cm)
    fig = _figure(figsize=(1.1 * len(classes) + 2.5, 1.0 * len(classes) + 2))
    ax = fig.subplots()
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    display = ConfusionMatrixDisplay(norm, display_labels=_short(classes)).plot(ax=ax, cmap="Blues",
                                                                                values_format=".2f", colorbar=False)
    for (i, j), n in np.ndenumerate(cm):
        # the same text colour as scikit-learn's share above it: white on dark cells, dark on light ones
        colour = display.text_[i, j].get_color()
        ax.text(j, i + 0.3, f"n={n}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xlabel("predicted class"), ax.set_ylabel("true class")
    ax.set_title(title or "confusion matrix (row-normalised)")
    return save_png(fig, path)


def score_distribution_png(score: np.ndarray, y: np.ndarray, classes: Sequence[str], severities: Sequence[float],
                           path: str | Path, title: str = "") -> Path:
    """Predicted severity score [N] per true class [N] (box + points), true severity as a line."""
    fig = _figure(figsize=(1.2 * len(classes) + 2, 4))
    ax = fig.subplots()
    groups = [np.asarray(score)[np.asarray(y) == k] for k in range(len(classes))]
    ax.boxplot([g if len(g) else [np.nan] for g in groups], positions=range(len(classes)), widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for k, g in enumerate(groups):
        ax.scatter(k + rng.uniform(-0.15, 0.15, len(g)), g, s=8, alpha=0.5)
        ax.hlines(severities[k], k - 0.3, k + 0.3, colors="red", linestyles="--", linewidth=1)
    ax.set_xticks(range(len(classes)), _short(classes), rotation=30)
    ax.set_xlabel("true class")
    ax.set_ylabel("predicted severity score")
    ax.set_title(title or "predicted severity per true class (red: true severity)")
    return save_png(fig, path)


def training_curves_png(log: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Train/valid loss and the accuracies on the held-out fold per epoch, from the run's log.csv."""
    fig = _figure(figsize=(9, 3.8), layout="constrained")
    a, b = fig.subplots(1, 2)
    for col in ("train_loss", "valid_loss"):
        if col in log:
            a.plot(log["epoch"], log[col], marker="o", label=col.replace("_", " "))
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    a.set_title("loss (valid: the held-out fold)", fontsize=10)
    for col in ("accuracy", "binary_accuracy"):
        if col in log:
            b.plot(log["epoch"], log[col], marker="o", label=col.replace("_", " "))
    b.set_xlabel("epoch"), b.set_ylabel("accuracy on the held-out fold"), b.set_ylim(0, 1), b.legend()
    b.set_title("accuracy on the held-out fold", fontsize=10)
    fold = f", fold {int(log['fold'].iloc[0])} held out" if "fold" in log and len(log) else ""
    fig.suptitle(title or f"training curves{fold}", fontsize=11)
    return save_png(fig, path)


def lr_find_png(lrs: Sequence[float], losses: Sequence[float], suggestion: float, path: str | Path) -> Path:
    """fastai's lr_find curve: loss against learning rate, the suggestion as a line."""
    fig = _figure(figsize=(5, 3.5))
    ax = fig.subplots()
    ax.plot(lrs, losses)
    ax.set_xscale("log"), ax.set_xlabel("learning rate"), ax.set_ylabel("loss")
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2e}")
    ax.legend()
    return save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# explanations


DISPLAY_PX = 600  # an explanation panel is ~400 px wide at save_png's dpi: more pixels only slow the drawing


def _for_display(image: np.ndarray, attr: np.ndarray, most: int = DISPLAY_PX) -> tuple[np.ndarray, np.ndarray]:
    """The image [H, W, 3] uint8 and its map [H, W] box-averaged to at most `most` pixels a side, for drawing.

    A 5000 x 5000 cell took ~14 s to draw at full size; the colour scale is set from the full map before.
    """
    h, w = attr.shape
    if max(h, w) <= most:
        return image, attr
    scale = most / max(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    small = np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BOX))
    return small, np.asarray(Image.fromarray(attr.astype(np.float32), "F").resize(size, Image.Resampling.BOX))


def explanation_png(result: Explanation, path: str | Path, settings: str) -> Path:
    """One explanation: the cell | the attribution heat map | the overlay (input grid).

    `settings` describes how it was computed (baseline, steps, rule) for the caption.
    """
    attr = result.attribution  # [H, W]
    vmax = float(np.percentile(np.abs(attr), 99.5)) or float(np.abs(attr).max()) or 1.0
    image, attr = _for_display(result.image, attr)
    fig = _figure(figsize=(11, 4.2))
    axes = fig.subplots(1, 3)
    axes[0].imshow(image)
    axes[0].set_title("cell")
    heat = axes[1].imshow(attr, cmap="RdBu_r", vmin=-vmax, vmax=vmax)
    short = "IG" if result.method == "ig" else result.method
    axes[1].set_title(f"{short} (red: for, blue: against)")
    fig.colorbar(heat, ax=axes[1], fraction=0.046, pad=0.04)
    grey = image.astype(np.float32).mean(axis=2)  # [H, W]
    axes[2].imshow(grey, cmap="gray", vmin=0, vmax=255)
    axes[2].imshow(attr, cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=np.clip(np.abs(attr) / vmax, 0, 1) * 0.85)
    axes[2].set_title("overlay")
    for ax in axes:
        ax.set_axis_off()
    what = "severity score" if result.target == "score" else f"logit of {result.target}"
    lines = [f"{printable(result.name)}: predicted {result.predicted}, severity score {result.score:.2f}"]
    if result.probs is not None:
        lines.append("p: " + "  ".join(f"{short_name(c)} {p:.2f}" for c, p in result.probs.items()))
    delta = (f"delta {result.delta:+.3g} ({result.relative_delta:.1%} of f(x) - f(baseline))"
             if np.isfinite(result.delta) else "no completeness delta")
    lines.append(f"{short} of the {what}, {settings}; {delta}")
    fig.suptitle("\n".join(lines), fontsize=9)
    return save_png(fig, path)


def nucleus_attribution_png(table: pd.DataFrame, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Per class: nucleus share of positive attribution beside nucleus share of area (left), enrichment (right).

    `table` has one row per cell: `label`, `nucleus_pos_share`, `nucleus_area_share`, `nucleus_enrichment`.
    """
    present = [c for c in classes if (table["label"] == c).any()]
    fig = _figure(figsize=(max(8, 1.9 * len(present) + 4), 4.2))
    left, right = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    rng = np.random.default_rng(0)
    pos = np.arange(len(present))
    for offset, metric, colour, label in ((-0.18, "nucleus_pos_share", "tab:red", "share of + attribution"),
                                          (0.18, "nucleus_area_share", "tab:grey", "share of area")):
        groups = [table.loc[table["label"] == c, metric].dropna().to_numpy() for c in present]
        box = left.boxplot([g if len(g) else [np.nan] for g in groups], positions=pos + offset, widths=0.3,
                           showfliers=False, patch_artist=True)
        for patch in box["boxes"]:
            patch.set(facecolor=colour, alpha=0.35)
        for k, g in enumerate(groups):
            left.scatter(k + offset + rng.uniform(-0.07, 0.07, len(g)), g, s=7, color=colour, alpha=0.6)
        left.plot([], [], color=colour, lw=6, alpha=0.5, label=label)
    left.set_xticks(pos, _short(present), rotation=30)
    left.set_ylim(-0.02, 1.02)
    left.set_ylabel("nucleus share")
    left.legend(loc="upper left", fontsize=8)
    left.set_title("nucleus: attribution vs area")
    groups = [table.loc[table["label"] == c, "nucleus_enrichment"].dropna().to_numpy() for c in present]
    right.boxplot([g if len(g) else [np.nan] for g in groups], positions=pos, widths=0.5, showfliers=False)
    for k, g in enumerate(groups):
        right.scatter(k + rng.uniform(-0.12, 0.12, len(g)), g, s=7, alpha=0.6)
    right.axhline(1.0, color="red", ls="--", lw=1)
    right.set_xticks(pos, _short(present), rotation=30)
    finite = table["nucleus_enrichment"].replace([np.inf, -np.inf], np.nan).dropna()
    if len(finite) and finite.min() > 0:
        right.set_yscale("log")
        right.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        right.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        right.yaxis.set_minor_formatter(NullFormatter())
    right.set_ylabel("nucleus enrichment (+ share / area share)")
    right.set_title("nucleus enrichment (red: no enrichment)")
    fig.suptitle(title, fontsize=9)
    return save_png(fig, path)


def nucleus_study(tables: Mapping[str, pd.DataFrame], classes: Sequence[str], title: str = "") -> Figure:
    """The poster's Fig. 8 for several runs on the same cells: per class and overall, one box per run.

    Top: the nucleus share of positive attribution, with the nucleus share of area (grey) as the
    level that size alone gives. Bottom: the enrichment on a log scale, with its control (grey:
    the enrichment of |x - x'| alone, what the baseline gives by itself) and the no-enrichment line.

    Args:
        tables: run name -> a `quantify` table (one row per cell: `label`, `nucleus_pos_share`,
            `nucleus_area_share`, `nucleus_enrichment`, `nucleus_change_enrichment`).

    Returns:
        The `Figure`, two axes (share, enrichment); in each, the boxes of the first run for every class then "all",
        then the next run's, the grey reference (area share, control) last.
    """
    first = next(iter(tables.values()))
    groups = [c for c in classes if (first["label"] == c).any()] + ["all"]
    colours = [f"C{i}" for i in range(len(tables))]
    series = [(name, colour) for name, colour in zip(tables, colours)]
    fig = _figure(figsize=(max(7.0, 0.35 * len(groups) * (len(tables) + 1) + 1.5), 7.0), layout="constrained")
    left, right = fig.subplots(2, 1)  # share above, enrichment below
    width = 0.8 / (len(tables) + 1)
    pos = np.arange(len(groups))

    def boxes(ax, values: Sequence[tuple[str, pd.DataFrame, str, str]]) -> None:
        for k, (label, table, metric, colour) in enumerate(values):
            data = [table[metric] if g == "all" else table.loc[table["label"] == g, metric] for g in groups]
            data = [d.replace([np.inf, -np.inf], np.nan).dropna().to_numpy() for d in data]
            box = ax.boxplot([d if len(d) else [np.nan] for d in data], positions=pos - 0.4 + width * (k + 0.5),
                             widths=width * 0.85, showfliers=False, patch_artist=True)
            for patch in box["boxes"]:
                patch.set(facecolor=colour, alpha=0.5)
            for median in box["medians"]:
                median.set(color="black")
            ax.plot([], [], color=colour, lw=6, alpha=0.6, label=label)
        ax.set_xticks(pos, [short_name(g) if g != "all" else "all" for g in groups])

    boxes(left, [(name, tables[name], "nucleus_pos_share", colour) for name, colour in series]
          + [("nucleus share of area", first, "nucleus_area_share", "tab:grey")])
    left.set_ylim(-0.02, 1.02)
    left.set_ylabel("nucleus share of positive attribution")
    left.legend(loc="upper left", fontsize=7, ncols=len(tables) + 1)
    boxes(right, [(name, tables[name], "nucleus_enrichment", colour) for name, colour in series]
          + [("control: |x - x'| alone", first, "nucleus_change_enrichment", "tab:grey")])
    right.axhline(1.0, color="red", ls="--", lw=1)
    right.set_yscale("log")
    right.yaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    right.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    right.yaxis.set_minor_formatter(NullFormatter())
    right.set_ylabel("nucleus enrichment (share / area share)")
    right.legend(loc="upper right", fontsize=7, ncols=len(tables) + 1)
    if title:
        fig.suptitle(title, fontsize=9)
    return fig


def nucleus_study_png(tables: Mapping[str, pd.DataFrame], classes: Sequence[str], path: str | Path,
                      title: str = "") -> Path:
    """`nucleus_study` written atomically as a PNG to `path`."""
    return save_png(nucleus_study(tables, classes, title), path)


# ---------------------------------------------------------------------------------------------
# reproduction


def comparison_png(groups: Sequence[str], panels: Sequence[str], mean: np.ndarray, std: np.ndarray,
                   paper: np.ndarray, path: str | Path, scales: Sequence[float] | None = None,
                   capped: Sequence[bool] | None = None, title: str = "") -> Path:
    """One panel per metric: our mean ± std (error bars) beside the paper's value, per head.

    Args:
        groups: the bar groups' labels [H] (the heads); panels: the panels' titles [M] (the metrics).
        mean, std, paper: [H, M] in the metrics' own units; NaN in `paper` means not reported.
        scales: [M] factor for display (100 for percentages); default 1.
        capped: [M] whether the metric is at most 1 (the axis then ends at its scale); default all.
    """
    mean, std, paper = (np.asarray(a, dtype=float) for a in (mean, std, paper))
    scales = [1.0] * len(panels) if scales is None else list(scales)
    capped = [True] * len(panels) if capped is None else list(capped)
    fig = _figure(figsize=(3.2 * len(panels), 3.6))
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    x, w = np.arange(len(groups)), 0.38
    for j, (ax, panel, scale) in enumerate(zip(axes, panels, scales)):
        ax.bar(x - w / 2, mean[:, j] * scale, w, yerr=std[:, j] * scale, capsize=3, label="ours", color="tab:blue")
        reported = ~np.isnan(paper[:, j])
        ax.bar(x[reported] + w / 2, paper[reported, j] * scale, w, label="paper", color="tab:orange", hatch="//")
        for i in np.flatnonzero(~reported):
            ax.text(x[i] + w / 2, 0, "n/r", ha="center", va="bottom", fontsize=7, color="grey")
        ax.set_xticks(x, list(groups))
        ax.set_title(panel)
        if capped[j]:  # bounded above by 1; kappa may go below 0
            low = np.nanmin(np.r_[(mean[:, j] - std[:, j]) * scale, 0.0])
            ax.set_ylim(low * 1.1, scale * 1.05)
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", ncol=2, frameon=False)
    fig.suptitle(title or "ours (mean ± std over folds) vs the paper (n/r: not reported)", x=0.01, ha="left")
    fig.tight_layout(rect=(0, 0, 1, 0.92))
    return save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# The poster's Fig. 7: the same cells explained by several runs (`herlev compare-explanations`)


def explanation_grid(images: Sequence[np.ndarray], nuclei: Sequence[np.ndarray],
                     maps: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str],
                     column_labels: Sequence[str], notes: Sequence[Sequence[str]] | None = None,
                     title: str = "", panel_inches: float = 2.0, dpi: int = 200):
    """One row per cell: the cell, then its IG overlay for each run; the nucleus outlined from the mask.

    Drawn with matplotlib's object API (a `Figure` on an Agg canvas, no pyplot state).

    Args:
        images: per cell, [H, W, 3] uint8.
        nuclei: per cell, [H, W] bool nucleus mask in the image's grid.
        maps: per cell, per run, the [H, W] attribution in the image's grid.
        row_labels: per cell; column_labels: per run.
        notes: per cell, per run, a short line under the panel (e.g. the prediction).

    Returns:
        The `matplotlib.figure.Figure`: [cells, runs + 1] axes, column 0 the cell itself, then a
        colour bar of the overlays (each panel scaled to its own 99.5th percentile of |IG|).
    """
    import textwrap

    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    n_rows, n_cols = len(images), len(column_labels) + 1
    width = panel_inches * n_cols + 0.9  # + the colour bar
    # constrained layout keeps the title clear of the column titles (tight_layout ignores a suptitle)
    fig = _figure(figsize=(width, panel_inches * n_rows + 0.8), dpi=dpi, layout="constrained")
    fig.get_layout_engine().set(w_pad=0.02, h_pad=0.02, wspace=0.01, hspace=0.01)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (image, nucleus) in enumerate(zip(images, nuclei)):
        grey = image.astype(np.float32).mean(axis=2)  # [H, W]
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=7.5)
        for c in range(n_cols):
            ax = axes[r, c]
            if c:
                attr = np.asarray(maps[r][c - 1], np.float32)  # [H, W]
                vmax = float(np.percentile(np.abs(attr), 99.5)) or float(np.abs(attr).max()) or 1.0
                ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
                ax.imshow(attr, cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=np.clip(np.abs(attr) / vmax, 0, 1) * 0.85)
                if notes is not None:
                    ax.set_xlabel(notes[r][c - 1], fontsize=7, labelpad=1)
            if nucleus.any():
                ax.contour(nucleus.astype(np.float32), levels=[0.5], colors="gold", linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("cell" if c == 0 else column_labels[c - 1], fontsize=9)
    if n_cols > 1:
        bar = fig.colorbar(ScalarMappable(Normalize(-1.0, 1.0), cmap="RdBu_r"), ax=axes[:, 1:],
                           shrink=min(0.8, 3 / n_rows), aspect=25, pad=0.02)
        bar.set_label("IG / 99.5th pct. of |IG| in the panel\n(red: for the target, blue: against)", fontsize=7)
        bar.ax.tick_params(labelsize=7)
    if title:
        # wrapped to the figure's width, so a long settings line is never cut at the sides
        fig.suptitle(textwrap.fill(title, width=max(20, int(width * 72 / (9 * 0.55)))), fontsize=9)
    return fig


def explanation_grid_png(path: str | Path, *args, dpi: int = 200, **kwargs) -> Path:
    """`explanation_grid(*args, **kwargs)` written atomically as a PNG to `path`."""
    with atomic_path(path) as tmp:
        explanation_grid(*args, dpi=dpi, **kwargs).savefig(tmp, format="png", dpi=dpi)
    return Path(path)


# --- screening and calibration figures: matplotlib's object API, no pyplot state ---

def roc_png(is_abnormal: np.ndarray, abnormal_score: np.ndarray, points: dict[str, float], path: str | Path,
            title: str = "") -> Path:
    """ROC of normal vs abnormal (scikit-learn's curve) with the screening operating points marked.

    Args:
        is_abnormal: truth [N]; abnormal_score: P(abnormal) or the severity score [N].
        points: `herlev_fa.metrics.operating_points` of the same cells.
    """
    from matplotlib.figure import Figure
    from sklearn.metrics import auc, roc_curve

    fig = Figure(figsize=(4.6, 4.4))
    ax = fig.add_subplot()
    truth = np.asarray(is_abnormal, bool)
    if truth.all() or not truth.any():
        ax.text(0.5, 0.5, "one group only: no ROC curve", ha="center", va="center")
    else:
        fpr, tpr, _ = roc_curve(truth, abnormal_score)
        ax.plot(fpr, tpr, color="tab:blue", label=f"ROC (AUC {auc(fpr, tpr):.3f})")
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    sens, spec = points["sensitivity"], points["specificity"]
    sens95, spec95 = points["sens_at_spec95"], points["spec_at_sens95"]
    marks = [  # where the curve crosses spec = 0.95 and sens = 0.95: on the curve, as the metrics read it
        (f"screening call (≥ {points.get('threshold', 0.5):.2g}): sens {sens:.2f}, spec {spec:.2f}",
         1 - spec, sens, "o"),
        (f"sens {sens95:.2f} at spec ≥ 0.95", 0.05, sens95, "s"),
        (f"spec {spec95:.2f} at sens ≥ 0.95", 1 - spec95, 0.95, "^"),
    ]
    for label, x, y, marker in marks:
        if not (np.isnan(x) or np.isnan(y)):
            ax.plot([x], [y], marker=marker, linestyle="none", markersize=8, label=label)
    ax.set_xlabel("1 - specificity (normal cells called abnormal)")
    ax.set_ylabel("sensitivity (abnormal cells found)")
    ax.set_xlim(-0.02, 1.02), ax.set_ylim(-0.02, 1.02)
    if ax.get_legend_handles_labels()[0]:  # nothing to label when only one group is present
        ax.legend(loc="lower right", fontsize=7)
    ax.set_title(title or "normal vs abnormal", fontsize=9)
    return save_png(fig, path)


MIN_BIN = 5  # reliability bins with fewer cells are drawn hollow and left off the curve: one cell is no rate


def reliability_png(probs: np.ndarray, y: np.ndarray, ece: float, path: str | Path, n_bins: int = 10,
                    title: str = "", min_bin: int = MIN_BIN) -> Path:
    """Reliability diagram of the top class probability [N, K] against the true class [N] (scikit-learn's bins).

    Each bin's point carries its number of cells; bins with fewer than `min_bin` cells are drawn
    hollow and grey, off the curve, so that one cell cannot drag it to 0 or 1.
    """
    from matplotlib.figure import Figure

    probs = np.asarray(probs)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(y)  # [N], [N]
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.searchsorted(edges[1:-1], confidence)  # [N], as scikit-learn's calibration_curve (and the ECE)
    count = np.bincount(bins, minlength=n_bins)  # [n_bins]
    with np.errstate(invalid="ignore", divide="ignore"):
        accuracy = np.bincount(bins, correct.astype(float), n_bins) / count  # NaN for empty bins
        mean_confidence = np.bincount(bins, confidence, n_bins) / count
    fig = Figure(figsize=(4.8, 5.4))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1, label="perfectly calibrated")
    solid = count >= min_bin
    top.plot(mean_confidence[solid], accuracy[solid], marker="o", color="tab:blue", label=f"model (ECE {ece:.3f})")
    tiny = (count > 0) & ~solid
    if tiny.any():
        top.plot(mean_confidence[tiny], accuracy[tiny], marker="o", linestyle="none", markerfacecolor="none",
                 color="tab:grey", label=f"bins of < {min_bin} cells")
    for b in np.flatnonzero(count):
        top.annotate(f"{count[b]}", (mean_confidence[b], accuracy[b]), textcoords="offset points", xytext=(0, 6),
                     ha="center", fontsize=7, color="tab:blue" if solid[b] else "tab:grey")
    top.set_ylabel("accuracy in the bin"), top.set_ylim(-0.02, 1.1), top.legend(loc="upper left", fontsize=8)
    top.set_title(title or "reliability of the top class probability", fontsize=9)
    top.text(0.98, 0.02, "numbers: cells in the bin", transform=top.transAxes, ha="right", va="bottom", fontsize=7,
             color="dimgrey")
    bottom.hist(confidence, bins=edges, color="tab:grey")
    bottom.set_xlabel("top class probability"), bottom.set_ylabel("cells")
    return save_png(fig, path)


# ---------------------------------------------------------------------------------------------
# sanity and faithfulness


def sanity_png(path: str | Path, image: np.ndarray, nucleus: np.ndarray, maps: Mapping[tuple[str, str], np.ndarray],
               methods: Sequence[str], steps: Sequence[str], title: str = "") -> Path:
    """One cell's maps along the randomisation cascade: a row per method, a column per step (|map|, own scale)."""
    fig = _figure(figsize=(1.7 * (len(steps) + 1), 1.8 * len(methods) + 0.6), layout="constrained")
    axes = np.atleast_2d(fig.subplots(len(methods), len(steps) + 1, squeeze=False))
    for r, method in enumerate(methods):
        axes[r, 0].imshow(image)
        axes[r, 0].contour(nucleus, levels=[0.5], colors="gold", linewidths=0.8)
        axes[r, 0].set_ylabel(method, fontsize=9)
        for c, step in enumerate(steps):
            m = np.abs(maps[(method, step)])
            axes[r, c + 1].imshow(m, cmap="magma", vmin=0, vmax=float(np.percentile(m, 99.5)) or 1.0)
            if r == 0:
                axes[r, c + 1].set_title(step if c == 0 else f"- {step}", fontsize=9)
    for ax in axes.ravel():
        ax.set_xticks([]), ax.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)


def faithfulness_png(path: str | Path, curves: pd.DataFrame, title: str = "") -> Path:
    """Deletion (left) and insertion (right) curves per method: the mean normalised output against the fraction of
    pixels removed (inserted), one line per removal order. `curves`: method, curve, order, fraction, output."""
    methods = list(dict.fromkeys(curves["method"]))
    fig = _figure(figsize=(7, 2.4 * len(methods) + 0.5), layout="constrained")
    axes = fig.subplots(len(methods), 2, squeeze=False)
    styles = {"most relevant first": "C3", "least relevant first": "C0", "random": "0.5", "nucleus first": "C2"}
    for r, method in enumerate(methods):
        for c, curve in enumerate(("deletion", "insertion")):
            ax = axes[r, c]
            part = curves[(curves["method"] == method) & (curves["curve"] == curve)]
            for order, colour in styles.items():
                line = part[part["order"] == order].groupby("fraction")["output"].mean()
                if len(line):
                    ax.plot(line.index, line.to_numpy(), color=colour, label=order)
            ax.set_title(f"{method}: {curve}", fontsize=9)
            ax.set_xlabel(f"fraction of pixels {'removed' if curve == 'deletion' else 'inserted'}", fontsize=8)
            ax.set_ylabel("normalised output", fontsize=8)
            ax.tick_params(labelsize=7)
    axes[0, 0].legend(fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return save_png(fig, path)

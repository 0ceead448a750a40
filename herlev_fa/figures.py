"""Figures of a run: confusion matrix, predicted severity per true class, training curves, lr_find.

Each function takes plain arrays and writes one PNG atomically; nothing here trains or loads.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from herlev_fa.atomic import save_figure  # noqa: E402
from herlev_fa.labels import short_name  # noqa: E402


def _short(names: Sequence[str]) -> list[str]:
    return [short_name(n) for n in names]


def confusion_matrix_png(cm: np.ndarray, classes: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix [K, K] (rows true, columns predicted) with counts and row-normalised colour."""
    cm = np.asarray(cm)
    fig, ax = plt.subplots(figsize=(1.1 * len(classes) + 2.5, 1.0 * len(classes) + 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    ConfusionMatrixDisplay(norm, display_labels=_short(classes)).plot(ax=ax, cmap="Blues", values_format=".2f", colorbar=False)
    for (i, j), n in np.ndenumerate(cm):
        ax.text(j, i + 0.3, f"n={n}", ha="center", va="center", fontsize=7, color="grey")
    ax.set_title(title or "confusion matrix (row-normalised)")
    return save_figure(fig, path)


def score_distribution_png(score: np.ndarray, y: np.ndarray, classes: Sequence[str], severities: Sequence[float],
                           path: str | Path, title: str = "") -> Path:
    """Predicted severity score [N] per true class [N] (box + points), true severity as a line."""
    fig, ax = plt.subplots(figsize=(1.2 * len(classes) + 2, 4))
    groups = [np.asarray(score)[np.asarray(y) == k] for k in range(len(classes))]
    ax.boxplot([g if len(g) else [np.nan] for g in groups], positions=range(len(classes)), widths=0.5, showfliers=False)
    rng = np.random.default_rng(0)
    for k, g in enumerate(groups):
        ax.scatter(k + rng.uniform(-0.15, 0.15, len(g)), g, s=8, alpha=0.5)
        ax.hlines(severities[k], k - 0.3, k + 0.3, colors="red", linestyles="--", linewidth=1)
    ax.set_xticks(range(len(classes)), _short(classes), rotation=30)
    ax.set_ylabel("predicted severity score")
    ax.set_title(title or "predicted severity per true class (red: true severity)")
    return save_figure(fig, path)


def training_curves_png(log: pd.DataFrame, path: str | Path) -> Path:
    """Train/valid loss and validation accuracy per epoch, from the run's log.csv."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(9, 3.5))
    for col in ("train_loss", "valid_loss"):
        if col in log:
            a.plot(log["epoch"], log[col], marker="o", label=col)
    a.set_xlabel("epoch"), a.set_ylabel("loss"), a.legend()
    for col in ("accuracy", "binary_accuracy"):
        if col in log:
            b.plot(log["epoch"], log[col], marker="o", label=col)
    b.set_xlabel("epoch"), b.set_ylim(0, 1), b.legend()
    return save_figure(fig, path)


def lr_find_png(lrs: Sequence[float], losses: Sequence[float], suggestion: float, path: str | Path) -> Path:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    ax.plot(lrs, losses)
    ax.set_xscale("log"), ax.set_xlabel("learning rate"), ax.set_ylabel("loss")
    ax.axvline(suggestion, color="red", linestyle="--", label=f"suggested {suggestion:.2e}")
    ax.legend()
    return save_figure(fig, path)


# ---------------------------------------------------------------------------------------------
# The poster's Fig. 7: the same cells explained by several runs (`herlev compare-explanations`)


def explanation_grid(images: Sequence[np.ndarray], nuclei: Sequence[np.ndarray],
                     maps: Sequence[Sequence[np.ndarray]], row_labels: Sequence[str],
                     column_labels: Sequence[str], notes: Sequence[Sequence[str]] | None = None,
                     title: str = "", panel_inches: float = 1.7, dpi: int = 100):
    """One row per cell: the cell, then its IG overlay for each run; the nucleus outlined from the mask.

    Drawn with matplotlib's object API (a `Figure` on an Agg canvas, no pyplot state).

    Args:
        images: per cell, [H, W, 3] uint8.
        nuclei: per cell, [H, W] bool nucleus mask in the image's grid.
        maps: per cell, per run, the [H, W] attribution in the image's grid.
        row_labels: per cell; column_labels: per run.
        notes: per cell, per run, a short line under the panel (e.g. the prediction).

    Returns:
        The `matplotlib.figure.Figure`: [cells, runs + 1] axes, column 0 the cell itself.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    n_rows, n_cols = len(images), len(column_labels) + 1
    fig = Figure(figsize=(panel_inches * n_cols, panel_inches * n_rows + 0.5), dpi=dpi)
    FigureCanvasAgg(fig)
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for r, (image, nucleus) in enumerate(zip(images, nuclei)):
        grey = image.astype(np.float32).mean(axis=2)  # [H, W]
        axes[r, 0].imshow(image)
        axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
        for c in range(n_cols):
            ax = axes[r, c]
            if c:
                attr = np.asarray(maps[r][c - 1], np.float32)  # [H, W]
                vmax = float(np.percentile(np.abs(attr), 99.5)) or float(np.abs(attr).max()) or 1.0
                ax.imshow(grey, cmap="gray", vmin=0, vmax=255)
                ax.imshow(attr, cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=np.clip(np.abs(attr) / vmax, 0, 1) * 0.85)
                if notes is not None:
                    ax.set_xlabel(notes[r][c - 1], fontsize=6, labelpad=1)
            if nucleus.any():
                ax.contour(nucleus.astype(np.float32), levels=[0.5], colors="gold", linewidths=0.8)
            ax.set_xticks([]), ax.set_yticks([])
            if r == 0:
                ax.set_title("cell" if c == 0 else column_labels[c - 1], fontsize=7)
    if title:
        fig.suptitle(title, fontsize=8)
    fig.tight_layout(pad=0.3)
    return fig


def explanation_grid_png(path: str | Path, *args, dpi: int = 100, **kwargs) -> Path:
    """`explanation_grid(*args, **kwargs)` written atomically as a PNG to `path`."""
    from herlev_fa.atomic import atomic_path

    fig = explanation_grid(*args, dpi=dpi, **kwargs)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return Path(path)

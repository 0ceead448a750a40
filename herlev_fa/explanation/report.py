"""Files and figures of the explanations: per-image IG figures, and `quantify` over a dataset.

What lives here:

* `write_explanation` / `explain_images`: `NAME_ig.png` (cell | heat map | overlay) and
  `NAME_ig.npy` (the [H, W] attribution in the image's own grid) per image, plus
  `explanations.csv`; this is what `herlev explain` runs.
* `quantify`: IG of every image that has a mask, its overlap with the mask regions
  (``explain.overlap``), streamed image batch by image batch with a progress bar; writes
  `quantify.csv` (one row per image), `quantify.md` (per-class mean, median, IQR) and
  `quantify.png` (nucleus attribution share per class beside the nucleus area share).

What does not: the attribution itself (``explain.attribution``) and the overlap maths.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from herlev_fa.atomic import atomic_path, write_text
from herlev_fa.data.items import FILE_NAME_ERRORS
from herlev_fa.errors import HerlevError
from herlev_fa.explanation.attribution import (
    DEFAULT_BASELINE,
    DEFAULT_METHOD,
    DEFAULT_TOL,
    METHODS,
    Explanation,
    content_mask,
    explainer_for,
    iter_explanations,
    letterbox_box,
    output_names,
    target_column,
    warn_unconverged,
)
from herlev_fa.explanation.overlap import padding_share, region_shares
from herlev_fa.figures import explanation_png, nucleus_attribution_png
from herlev_fa.labels import short_name
from herlev_fa.model.heads import get_head
from herlev_fa.progress import progress_bar

# Per-class summary: the columns and how the markdown / rich table label them.
SUMMARY_METRICS: dict[str, str] = {
    "nucleus_pos_share": "nucleus share of + attribution",
    "nucleus_abs_share": "nucleus share of |attribution|",
    "nucleus_area_share": "nucleus share of area",
    "nucleus_enrichment": "nucleus enrichment (+ share / area share)",
    "nucleus_change_enrichment": "enrichment of |x - baseline| alone (uniform-gradient control)",
    "nucleus_top5": "top 5% pixels in nucleus",
    "nucleus_top10": "top 10% pixels in nucleus",
    "cytoplasm_pos_share": "cytoplasm share of + attribution",
    "background_pos_share": "background share of + attribution",
}


# ---------------------------------------------------------------------------------------------
# explain: one figure and one map per image


def write_explanation(result: Explanation, out_dir: str | Path, baseline: str, steps: int,
                      method: str = DEFAULT_METHOD) -> tuple[Path, Path]:
    """Write `NAME_ig.png` and `NAME_ig.npy` ([H, W] float32, input grid) atomically; returns both paths."""
    out_dir = Path(out_dir)
    # the figure first: if it cannot be drawn, no map is left behind without it
    png = explanation_png(result, out_dir / f"{result.name}_ig.png",
                          settings=f"baseline {baseline}, {steps} {METHODS[method]} steps")
    npy = out_dir / f"{result.name}_ig.npy"
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        np.save(f, result.attribution.astype(np.float32))
    return png, npy


def explanation_row(result: Explanation) -> dict:
    """The scalars of one explanation, as a row of `explanations.csv`."""
    row = {"name": result.name, "path": str(result.path), "predicted": result.predicted, "target": result.target,
           "score": result.score}
    if result.probs is not None:
        row.update({f"p_{c}": p for c, p in result.probs.items()})
    row.update(gap=result.gap, delta=result.delta, relative_delta=result.relative_delta, converged=result.converged,
               attribution_sum=float(result.attribution.sum()))
    return row


def explain_images(run, paths: Sequence[str | Path], out: str | Path | None = None, target: str = "predicted",
                   steps: int = 50, baseline: str = DEFAULT_BASELINE, device: str = "auto", bs: int = 8,
                   internal_batch_size: int | None = None, precision: str = "fp32", tol: float = DEFAULT_TOL,
                   method: str = DEFAULT_METHOD, progress: bool = True) -> tuple[pd.DataFrame, Path]:
    """Explain images and write `NAME_ig.png`, `NAME_ig.npy` per image and `explanations.csv` into `out`.

    `out` defaults to `RUN/explain`. Maps are written as they are computed (streaming).

    Returns:
        The rows of `explanations.csv`, and the output folder.

    Raises:
        HerlevError: bad run, target, baseline or steps; a missing or unreadable image.
    """
    from herlev_fa.runs import Run, load_run

    run = run if isinstance(run, Run) else load_run(run)
    out_dir = Path(out) if out is not None else run.path / "explain"
    rows = []
    bar, advance = progress_bar(progress and len(paths) > 1, "explaining", len(paths))
    with bar:
        for result in iter_explanations(run, paths, target=target, steps=steps, baseline=baseline, device=device,
                                        bs=bs, internal_batch_size=internal_batch_size, precision=precision, tol=tol,
                                        method=method):
            png, npy = write_explanation(result, out_dir, baseline, steps, method)
            rows.append({**explanation_row(result), "figure": str(png), "map": str(npy)})
            advance(1)
    table = pd.DataFrame(rows)
    with atomic_path(out_dir / "explanations.csv") as tmp:
        table.to_csv(tmp, index=False, errors=FILE_NAME_ERRORS)
    warn_unconverged(table["name"].tolist(), table["relative_delta"].tolist(), steps, tol)
    return table, out_dir


# ---------------------------------------------------------------------------------------------
# quantify: overlap of IG with the mask regions over a dataset


def load_cell(image_path: str | Path, mask_path: str | Path,
              size: int) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """An image and its mask regions, letterboxed together.

    Returns:
        uint8 [S, S, 3] image, uint8 [S, S] region codes, and the image's own (H, W).

    The mask goes through the same `letterbox(size)` as the image (nearest-neighbour resize,
    same padding), so region codes and pixels stay aligned.

    Raises:
        HerlevError: unreadable image or mask, or a mask of another size than its image.
    """
    from herlev_fa.data.augment import letterbox
    from herlev_fa.data.images import load_image
    from herlev_fa.explanation.masks import read_mask

    image = load_image(image_path)  # [H, W, 3]
    regions = read_mask(mask_path)  # [h, w]
    if regions.shape != image.shape[:2]:
        raise HerlevError(f"mask '{mask_path}' is {regions.shape[1]}x{regions.shape[0]} px but its image "
                          f"'{image_path}' is {image.shape[1]}x{image.shape[0]}; a mask must have its image's size")
    boxed = letterbox(size)(image=image, mask=regions)
    return boxed["image"], boxed["mask"], image.shape[:2]


def quantify_items(run, data: str | Path | None = None, split: str = "valid") -> tuple[pd.DataFrame, int]:
    """The items `quantify` explains: the held-out fold (`valid`) or every image (`all`) that has a mask.

    Returns:
        The item table with its `mask` column filled, and how many items had no mask.

    Raises:
        HerlevError: unknown split, missing data, or no image with a mask.
    """
    from herlev_fa.evaluation import evaluation_items

    items, _ = evaluation_items(run, data, split)
    with_mask = items[items["mask"] != ""].reset_index(drop=True)
    if with_mask.empty:
        raise HerlevError(f"none of the {len(items)} image(s) of split '{split}' has a mask "
                          "(<stem>-d.bmp or <stem>-d.png beside the image); quantify needs masks")
    skipped = len(items) - len(with_mask)
    if skipped:
        first = items.loc[items["mask"] == "", "path"].iloc[0]
        warnings.warn(f"{skipped} of {len(items)} image(s) have no mask (<stem>-d.bmp or <stem>-d.png) and are "
                      f"skipped, e.g. '{first}'", UserWarning, stacklevel=3)
    return with_mask, skipped


@dataclass
class QuantifyResult:
    """What `quantify` wrote and found."""

    table: pd.DataFrame  # one row per image (quantify.csv)
    summary: pd.DataFrame  # per class and 'all': n, then mean/median/q25/q75 of SUMMARY_METRICS
    out_dir: Path
    files: list[Path]
    skipped: int  # images without a mask
    unconverged: int  # images whose relative delta is above tol


def quantify(run, data: str | Path | None = None, split: str = "valid", out: str | Path | None = None,
             target: str = "predicted", steps: int = 50, baseline: str = DEFAULT_BASELINE, device: str = "auto",
             bs: int = 8, internal_batch_size: int | None = None, precision: str = "fp32",
             tol: float = DEFAULT_TOL, method: str = DEFAULT_METHOD, progress: bool = True) -> QuantifyResult:
    """How much of each image's IG falls on the nucleus, cytoplasm and background of its mask.

    Explains every image with a mask (the run's held-out fold, or `split='all'`), overlaps its
    map with the mask regions in the model's letterboxed grid (padding excluded; see
    ``explain.overlap``), and writes `quantify.csv`, `quantify.md` and `quantify.png` into `out`
    (default `RUN/quantify-<split>`). Maps are not kept: memory stays flat over the dataset.

    Raises:
        HerlevError: bad run or options, missing data, an unreadable image or mask, a mask of
            another size than its image, or no image with a mask.
    """
    from herlev_fa.runs import Run, load_run

    run = run if isinstance(run, Run) else load_run(run)
    if bs < 1:
        raise HerlevError(f"--bs {bs} must be at least 1")
    column = target_column(target, run.head, run.task.classes)
    items, skipped = quantify_items(run, data, split)
    explainer = explainer_for(run, steps=steps, baseline=baseline, device=device,
                              internal_batch_size=internal_batch_size, precision=precision, tol=tol, method=method)
    out_dir = Path(out) if out is not None else run.path / f"quantify-{split}"
    names = output_names([Path(p) for p in items["path"]])
    score_index = get_head(run.head).score_index(len(run.task.classes))
    rows = []
    bar, advance = progress_bar(progress, "quantifying", len(items))
    with bar:
        for start in range(0, len(items), bs):
            chunk = items.iloc[start:start + bs]
            cells = [load_cell(p, m, run.size) for p, m in zip(chunk["path"], chunk["mask"])]
            batch = explainer(np.stack([c[0] for c in cells]), column)  # [B, S, S] maps inside
            for i, (item, (_, regions, (h, w))) in enumerate(zip(chunk.itertuples(index=False), cells)):
                keep = content_mask(letterbox_box(h, w, run.size), run.size)  # [S, S]
                grid = batch.attribution[i]  # [S, S]
                t = int(batch.target[i])
                predicted = run.task.classes[int(batch.predicted[i])]
                rows.append({
                    "name": names[start + i], "path": item.path, "label": item.label, "predicted": predicted,
                    "target": "score" if t == score_index else run.task.classes[t], "score": float(batch.score[i]),
                    "p_predicted": float(batch.probs[i].max()) if batch.probs is not None else np.nan,
                    "gap": float(batch.gap[i]), "delta": float(batch.delta[i]),
                    "relative_delta": float(batch.relative_delta[i]),
                    **region_shares(grid, regions, keep),
                    "nucleus_change_enrichment": region_shares(batch.change[i], regions, keep)["nucleus_enrichment"],
                    "padding_abs_share": padding_share(grid, keep),
                })
            advance(len(chunk))
    table = pd.DataFrame(rows)
    summary = summarize(table, run.task.classes)
    title = f"IG overlap with mask regions: run {run.path.name}, split {split}, n={len(table)}"
    settings = f"target {target}, baseline {baseline}, {steps} {METHODS[method]} steps"
    files = [out_dir / "quantify.csv", out_dir / "quantify.md", out_dir / "quantify.png"]
    with atomic_path(files[0]) as tmp:
        table.to_csv(tmp, index=False, errors=FILE_NAME_ERRORS)
    write_text(files[1], summary_markdown(summary, title, settings))
    nucleus_attribution_png(table, run.task.classes, files[2], title=f"{run.path.name}: {settings}")
    unconverged = warn_unconverged(table["name"].tolist(), table["relative_delta"].tolist(), steps, tol)
    return QuantifyResult(table, summary, out_dir, files, skipped, unconverged)


# ---------------------------------------------------------------------------------------------
# Summary table, markdown and figure (plain DataFrames in, files out)


def summarize(table: pd.DataFrame, classes: Sequence[str]) -> pd.DataFrame:
    """Per true class (task order) and over all images: n, and mean / median / q25 / q75 of each summary metric.

    NaNs (e.g. the enrichment of an image without nucleus pixels) are left out of each statistic.
    """
    groups = [(c, table[table["label"] == c]) for c in classes if (table["label"] == c).any()]
    rows = []
    for name, part in [*groups, ("all", table)]:
        row: dict = {"class": name, "n": len(part)}
        for metric in SUMMARY_METRICS:
            values = part[metric].to_numpy(dtype=np.float64)
            values = values[np.isfinite(values)]
            stats = (values.mean(), np.median(values), *np.percentile(values, [25, 75])) if values.size \
                else (np.nan,) * 4
            row.update({f"{metric}_{s}": float(v) for s, v in zip(("mean", "median", "q25", "q75"), stats)})
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(summary: pd.DataFrame, title: str, settings: str = "") -> str:
    """The per-class summary as markdown: one table per metric, rows = classes, mean / median / IQR."""
    lines = [f"# {title}", ""]
    if settings:
        lines += [settings, ""]
    lines += ["Enrichment = nucleus share of positive attribution / nucleus share of area "
              "(1 = no more than its size; see docs/explainability.md).", ""]
    for metric, label in SUMMARY_METRICS.items():
        lines += [f"## {label} (`{metric}`)", "", "| class | n | mean | median | IQR (q25 - q75) |",
                  "|---|---:|---:|---:|---:|"]
        for _, r in summary.iterrows():
            lines.append(f"| {r['class']} | {r['n']} | {r[f'{metric}_mean']:.3f} | {r[f'{metric}_median']:.3f} | "
                         f"{r[f'{metric}_q25']:.3f} - {r[f'{metric}_q75']:.3f} |")
        lines.append("")
    return "\n".join(lines)


def summary_table(summary: pd.DataFrame, title: str = ""):
    """The per-class summary as a rich Table.

    Columns: nucleus share of positive attribution and of area (median [IQR]), nucleus
    enrichment (mean, median [IQR]), the control (median enrichment of |x - baseline| alone),
    and the fraction of the top 10% pixels in the nucleus (median [IQR]).
    """
    from rich.table import Table

    table = Table(title=title or None)
    for col in ("class", "n", "nucleus attr.", "nucleus area", "enrich. mean", "enrich. median [IQR]", "control",
                "top 10%"):
        table.add_column(col, justify="left" if col == "class" else "right")

    def iqr(r, m: str) -> str:
        return f"{r[f'{m}_median']:.2f} [{r[f'{m}_q25']:.2f}-{r[f'{m}_q75']:.2f}]"

    for _, r in summary.iterrows():
        table.add_row(short_name(str(r["class"])), str(r["n"]), iqr(r, "nucleus_pos_share"), iqr(r, "nucleus_area_share"),
                      f"{r['nucleus_enrichment_mean']:.2f}", iqr(r, "nucleus_enrichment"),
                      f"{r['nucleus_change_enrichment_median']:.2f}", iqr(r, "nucleus_top10"),
                      end_section=r["class"] == summary["class"].iloc[-2] if len(summary) > 1 else False)
    return table

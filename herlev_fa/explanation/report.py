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

import dataclasses
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from herlev_fa.atomic import atomic_path, check_output_folder, write_text
from herlev_fa.data.items import FILE_NAME_ERRORS
from herlev_fa.config import ATTRIBUTION_METHODS as METHOD_NAMES
from herlev_fa.config import IG_RULES, IGSettings
from herlev_fa.errors import HerlevError, SettingError
from herlev_fa.explanation.attribution import (
    DEFAULT_RULE,
    GAP_FLOOR,
    Explainer,
    Explanation,
    content_mask,
    explainer_for,
    iter_explanations,
    letterbox_box,
    output_names,
    prefetched,
    target_column,
    warn_unconverged,
)
from herlev_fa.explanation.masks import NUCLEUS
from herlev_fa.explanation.overlap import (
    localisation_batch,
    padding_share_batch,
    partners,
    region_shares_batch,
)
from herlev_fa.figures import explanation_png, nucleus_attribution_png
from herlev_fa.labels import short_name
from herlev_fa.progress import progress_bar

# Per-class summary: the columns and how the markdown / rich table label them.
SUMMARY_METRICS: dict[str, str] = {
    "nucleus_pos_share": "nucleus share of + attribution",
    "nucleus_abs_share": "nucleus share of |attribution|",
    "nucleus_area_share": "nucleus share of area",
    "nucleus_enrichment": "nucleus enrichment (+ share / area share)",
    "nucleus_change_enrichment": "enrichment of |x - baseline| alone (uniform-gradient control)",
    "nucleus_enrichment_other": "enrichment on another cell's nucleus mask (position control)",
    "nucleus_top5": "top 5% pixels in nucleus",
    "nucleus_top10": "top 10% pixels in nucleus",
    "cytoplasm_pos_share": "cytoplasm share of + attribution",
    "background_pos_share": "background share of + attribution",
    "pointing_game": "pointing game (most attributed pixel in nucleus)",
    "energy_pointing_game": "energy-based pointing game",
    "relevance_rank_accuracy": "relevance rank accuracy",
}
OTHER_CELL_SEED = 0  # the draw of the other cell whose nucleus mask is the position control


# ---------------------------------------------------------------------------------------------
# explain: one figure and one map per image


def write_explanation(result: Explanation, out_dir: str | Path, baseline: str = "mean", steps: int = 50,
                      rule: str = DEFAULT_RULE, description: str | None = None) -> tuple[Path, Path]:
    """Write `NAME_METHOD.png` and `NAME_METHOD.npy` ([H, W] float32, input grid) atomically, e.g. `cell_ig.png`;
    returns both paths. `description` (`IGSettings.describe`) captions the figure; without it, IG's baseline, steps
    and rule do."""
    out_dir = Path(out_dir)
    # the figure first: if it cannot be drawn, no map is left behind without it
    bf16 = ", bf16" if result.precision == "bf16" else ""
    png = explanation_png(result, out_dir / f"{result.name}_{result.method}.png",
                          settings=description or f"baseline {baseline}, {steps} {IG_RULES[rule]} steps{bf16}")
    npy = out_dir / f"{result.name}_{result.method}.npy"
    with atomic_path(npy) as tmp, open(tmp, "wb") as f:
        np.save(f, result.attribution.astype(np.float32))
    return png, npy


def explanation_row(result: Explanation) -> dict:
    """The scalars of one explanation, as a row of `explanations.csv`."""
    row = {"name": result.name, "path": str(result.path), "method": result.method, "predicted": result.predicted,
           "target": result.target, "score": result.score}
    if result.probs is not None:
        row.update({f"p_{c}": p for c, p in result.probs.items()})
    row.update(gap=result.gap, delta=result.delta, relative_delta=result.relative_delta, converged=result.converged,
               precision=result.precision, attribution_sum=float(result.attribution.sum()))
    return row


def explain_images(run, paths: Sequence[str | Path], out: str | Path | None = None,
                   settings: IGSettings = IGSettings(), progress: bool = True) -> tuple[pd.DataFrame, Path]:
    """Explain images and write `NAME_ig.png`, `NAME_ig.npy` per image and `explanations.csv` into `out`.

    `out` defaults to `RUN/explain`. Maps are written as they are computed (streaming).

    Returns:
        The rows of `explanations.csv`, and the output folder.

    Raises:
        HerlevError: bad run, target, baseline or steps; a missing or unreadable image.
    """
    from herlev_fa.runs import load_run

    run = load_run(run)
    out_dir = Path(out) if out is not None else run.path / "explain"
    rows = []
    bar, advance = progress_bar(progress and len(paths) > 1, "explaining", len(paths))
    with bar:
        for result in iter_explanations(run, paths, settings):
            png, npy = write_explanation(result, out_dir, description=settings.describe(result.precision))
            rows.append({**explanation_row(result), "figure": str(png), "map": str(npy)})
            advance(1)
    table = pd.DataFrame(rows)
    with atomic_path(out_dir / "explanations.csv") as tmp:
        table.to_csv(tmp, index=False, errors=FILE_NAME_ERRORS)
    warn_unconverged(table["name"].tolist(), table["relative_delta"].tolist(), settings.steps, settings.tol)
    return table, out_dir


def delta_summary(delta: Sequence[float], relative_delta: Sequence[float], tol: float,
                  precision: Sequence[str] = ()) -> str:
    """One line on the completeness error IG reached: mean |delta|, median and max relative delta, how many above
    tol, and the precision(s) the gradients were computed in (the `precision` column of the rows), if given."""
    delta, rel = np.abs(np.asarray(delta, np.float64)), np.asarray(relative_delta, np.float64)
    if not len(delta):
        return "IG delta: no image"
    if not np.isfinite(delta).any():
        return "no completeness delta: only IG has one (the method's maps need not sum to f(x) - f(baseline))"
    used = f"; gradients in {precisions_used(precision)}" if len(precision) else ""
    return (f"IG delta: mean |delta| {delta.mean():.3g}, relative delta median {np.median(rel):.2%}, "
            f"max {rel.max():.1%}; {int((rel > tol).sum())} of {len(rel)} above {tol:.0%}{used}")


def precisions_used(precision: Sequence[str]) -> str:
    """'fp32', 'bf16' or 'bf16, fp32': the distinct precisions of a table's rows (several runs may differ)."""
    return ", ".join(sorted(set(precision)))


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
    from herlev_fa.data.images import letterbox
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


def masked_batch(items: pd.DataFrame, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Letterboxed images [B, S, S, 3] uint8, region codes [B, S, S] uint8 and content [B, S, S] bool of `items`."""
    cells = [load_cell(p, m, size) for p, m in zip(items["path"], items["mask"])]
    keep = np.stack([content_mask(letterbox_box(h, w, size), size) for _, _, (h, w) in cells])
    return np.stack([c[0] for c in cells]), np.stack([c[1] for c in cells]), keep


def letterboxed_regions(mask_path: str | Path, size: int) -> np.ndarray:
    """A mask's region codes [S, S] uint8 in the model's letterboxed grid (as `load_cell` carries them)."""
    from herlev_fa.data.images import letterbox
    from herlev_fa.explanation.masks import read_mask

    regions = read_mask(mask_path)  # [h, w]
    return letterbox(size)(image=np.zeros((*regions.shape, 3), np.uint8), mask=regions)["mask"]


def other_cells(masks: Sequence[str | Path], size: int, seed: int = OTHER_CELL_SEED) -> np.ndarray:
    """For each cell, the index of another cell whose nucleus mask is its position control (-1: none).

    The other cell is drawn (`overlap.partners`, seeded) among the cells whose content sits in the same box of the
    model's grid (same letterbox), so that its mask lies on the same pixels; each cell is drawn once.
    """
    from PIL import Image

    boxes = []
    for m in masks:
        with Image.open(m) as im:  # the header only: a mask has its image's size
            w, h = im.size
        box = letterbox_box(h, w, size)
        boxes.append(f"{box.top},{box.left},{box.height},{box.width}")
    return partners(np.asarray(boxes), seed)
PARTIAL = "quantify.partial.csv"  # rows appended as computed; becomes quantify.csv when every cell is done
PARTIAL_RECORD = "quantify.partial.json"  # what the partial rows were computed with: --resume refuses anything else
# read back as text, never as numbers
TEXT_COLUMNS = ("name", "path", "label", "method", "predicted", "target", "precision", "other_cell")


def sample_items(items: pd.DataFrame, limit: int | None, seed: int = 0) -> pd.DataFrame:
    """A seeded random sample of `limit` rows of `items`, kept in their order; every row for None or limit >= len.

    Raises:
        HerlevError: limit below 1.
    """
    if limit is None or limit >= len(items):
        return items
    if limit < 1:
        raise SettingError("{limit} {value} is out of range: use 1 or more cells", limit)
    keep = np.sort(np.random.default_rng(seed).choice(len(items), size=limit, replace=False))
    return items.iloc[keep].reset_index(drop=True)


class RowLog:
    """Rows appended to a CSV as they are computed, so that a stopped run keeps them and can be resumed.

    `record` (plain JSON) says what the rows were computed with; `resume` reads back the rows of
    an earlier call with the same record, and refuses one made otherwise.
    """

    def __init__(self, folder: Path, record: dict, resume: bool):
        import json

        self.path, self.record_path = folder / PARTIAL, folder / PARTIAL_RECORD
        self.done, self.record, self.started = pd.DataFrame(), record, True
        if resume and self.path.is_file():
            try:
                old = json.loads(self.record_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                old = None
            if old != record:
                changed = [k for k in record if (old or {}).get(k) != record[k]]
                raise HerlevError(f"the stopped quantify in '{folder}' was computed with other settings "
                                  f"({', '.join(changed) or 'unknown'}); rerun without --resume to start over")
            self.done = pd.read_csv(self.path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False,
                                    na_values=[""], encoding_errors=FILE_NAME_ERRORS)
        else:  # started afresh: the folder and the record are made with the first rows, so that an error
            self.started = False  # before any cell was explained leaves nothing behind
            self.path.unlink(missing_ok=True)

    def done_paths(self) -> set[str]:
        return set(self.done["path"]) if len(self.done) else set()

    def append(self, rows: list[dict]) -> None:
        if not self.started:
            from herlev_fa.atomic import write_json

            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_json(self.record_path, self.record)
            self.started = True
        header = not self.path.is_file()
        with open(self.path, "a", encoding="utf-8", newline="", errors=FILE_NAME_ERRORS) as f:
            pd.DataFrame(rows).to_csv(f, header=header, index=False)
            f.flush()

    def finish(self, rows: list[dict], order: Sequence[str]) -> pd.DataFrame:
        """Every row, earlier and new, in the order of `order` (paths)."""
        table = pd.concat([self.done, pd.DataFrame(rows)], ignore_index=True) if len(self.done) else pd.DataFrame(rows)
        position = {p: i for i, p in enumerate(order)}
        table = table.iloc[np.argsort([position[p] for p in table["path"]], kind="stable")].reset_index(drop=True)
        return table

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
        self.record_path.unlink(missing_ok=True)


@dataclass
class QuantifyResult:
    """What `quantify` wrote and found."""

    table: pd.DataFrame  # one row per image (quantify.csv)
    summary: pd.DataFrame  # per class and 'all': n, then mean/median/q25/q75 of SUMMARY_METRICS
    out_dir: Path
    files: list[Path]
    skipped: int  # images without a mask
    unconverged: int  # images whose relative delta is above tol
    delta: str  # one line on the IG completeness error reached (`delta_summary`)


def quantify(run, data: str | Path | None = None, split: str = "valid", out: str | Path | None = None,
             settings: IGSettings = IGSettings(), progress: bool = True,
             explainer: Explainer | None = None, limit: int | None = None, seed: int = 0,
             resume: bool = False) -> QuantifyResult:
    """How much of each image's IG falls on the nucleus, cytoplasm and background of its mask.

    Explains every image with a mask (the run's held-out fold, or `split='all'`), overlaps its
    map with the mask regions in the model's letterboxed grid (padding excluded; see
    ``explain.overlap``), and writes `quantify.csv`, `quantify.md` and `quantify.png` into `out`
    (default `RUN/quantify-<split>`). The shares of a whole batch are computed on the device
    (`region_shares_batch`) and copied to the host once; the next batch is decoded meanwhile.
    Maps are not kept: memory stays flat over the dataset. `explainer` replaces the one built
    from the run and `settings`. Each row also has the localisation metrics against the nucleus
    (`overlap.localisation_batch`) and the enrichment on another cell's nucleus mask
    (`nucleus_enrichment_other`, drawn by `other_cells`: the position control).

    Rows are appended to `quantify.partial.csv` batch by batch, so a stopped run keeps them;
    `resume` explains only the cells it lacks (same run, split, limit, seed and settings, or
    an error), and the finished files replace the partial ones. `limit`: explain a seeded random
    sample of that many cells (`sample_items`).

    Raises:
        HerlevError: bad run or options, missing data, an unreadable image or mask, a mask of
            another size than its image, or no image with a mask.
    """
    import torch

    from herlev_fa.runs import load_run

    run = load_run(run)
    column = target_column(settings.target, run.head, run.task.classes)
    items, skipped = quantify_items(run, data, split)
    items = sample_items(items, limit, seed)
    out_dir = Path(out) if out is not None else run.path / f"quantify-{split}"
    names = output_names([Path(p) for p in items["path"]])
    order = list(items["path"])
    record = {"run": str(run.path.resolve()), "split": split, "data": str(data) if data is not None else None,
              "limit": limit, "seed": seed, "cells": len(items),
              "settings": {k: v for k, v in dataclasses.asdict(settings).items() if k not in ("bs", "device", "tol")}}
    check_output_folder(out_dir, "--out")  # before any work
    log = RowLog(out_dir, record, resume)
    # the other cells are drawn over the whole sample, so that a resumed run pairs every cell as the first call did
    other, all_names, all_masks = other_cells(items["mask"], run.size), names, list(items["mask"])  # [N], N, N
    todo = ~items["path"].isin(log.done_paths()).to_numpy()  # [N] cells not yet explained
    names = [n for n, t in zip(names, todo) if t]
    items, other = items[todo].reset_index(drop=True), other[todo]
    if len(items):
        explainer = explainer or explainer_for(run, settings)
    classes = run.task.classes
    score_index = run.head.score_index(len(classes))
    starts = range(0, len(items), settings.bs)
    rows = []

    def load(i: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        images, regions, keep = masked_batch(items.iloc[i:i + settings.bs], run.size)
        theirs = np.stack([letterboxed_regions(all_masks[j], run.size) if j >= 0 else np.full_like(r, 255)
                           for j, r in zip(other[i:i + settings.bs], regions)])  # [B, S, S]; 255: no other cell
        return images, regions, keep, theirs

    bar, advance = progress_bar(progress and len(items) > 0, "quantifying", len(items))
    with bar:
        for start, (images, regions, keep, theirs) in prefetched(load, starts):
            batch = explainer.attribute(images, column)  # maps [B, S, S] on the device
            regions_t = torch.from_numpy(regions).to(explainer.device)  # [B, S, S]
            theirs_t = torch.from_numpy(theirs).to(explainer.device)  # [B, S, S]
            keep_t = torch.from_numpy(keep).to(explainer.device)
            shares = region_shares_batch(batch.attribution, regions_t, keep_t)  # name -> [B]
            shares["nucleus_change_enrichment"] = region_shares_batch(batch.change, regions_t, keep_t, top=False)[
                "nucleus_enrichment"]
            shares["padding_abs_share"] = padding_share_batch(batch.attribution, keep_t)
            has_other = theirs_t[:, 0, 0] != 255  # [B]
            shares["nucleus_enrichment_other"] = torch.where(
                has_other, region_shares_batch(batch.attribution, torch.where(has_other[:, None, None], theirs_t, 0),
                                               keep_t, top=False)["nucleus_enrichment"], torch.nan)
            shares.update(localisation_batch(batch.attribution, regions_t == NUCLEUS, keep_t))
            p_max = (batch.probs.max(dim=1).values if batch.probs is not None
                     else torch.full_like(batch.score, torch.nan))
            columns = {"target": batch.target, "predicted": batch.predicted, "score": batch.score, "p_predicted": p_max,
                       "gap": batch.gap, "delta": batch.delta, **shares}
            host = torch.stack([v.double() for v in columns.values()], dim=1).cpu().numpy()  # [B, M]: one copy a batch
            values = dict(zip(columns, host.T))  # name -> [B]
            values["relative_delta"] = np.abs(values["delta"]) / np.maximum(np.abs(values["gap"]), GAP_FLOOR)
            chunk = items.iloc[start:start + settings.bs]
            for i, item in enumerate(chunk.itertuples(index=False)):
                t = int(values["target"][i])
                j = int(other[start + i])
                rows.append({
                    "name": names[start + i], "path": item.path, "label": item.label, "method": settings.method,
                    "predicted": classes[int(values["predicted"][i])],
                    "target": "score" if t == score_index else classes[t],
                    **{k: float(values[k][i]) for k in ("score", "p_predicted", "gap", "delta", "relative_delta")},
                    "precision": batch.precision,
                    **{k: float(values[k][i]) for k in shares},
                    "other_cell": all_names[j] if j >= 0 else "",
                })
            log.append(rows[-len(chunk):])
            advance(len(chunk))
    table = log.finish(rows, order)
    summary = summarize(table, classes)
    title = f"{METHOD_NAMES[settings.method]} on mask regions: run {run.path.name}, split {split}, n={len(table)}"
    delta = delta_summary(table["delta"], table["relative_delta"], settings.tol, table["precision"])
    described = settings.describe(precisions_used(table["precision"]))  # what auto chose, not 'auto'
    files = [out_dir / "quantify.csv", out_dir / "quantify.md", out_dir / "quantify.png"]
    with atomic_path(files[0]) as tmp:
        table.to_csv(tmp, index=False, errors=FILE_NAME_ERRORS)
    write_text(files[1], summary_markdown(summary, title, f"{described}\n\n{delta}"))
    nucleus_attribution_png(table, classes, files[2], title=f"{run.path.name}: {described}")
    log.remove()  # quantify.csv holds every row now
    unconverged = warn_unconverged(table["name"].tolist(), table["relative_delta"].tolist(), settings.steps,
                                   settings.tol)
    return QuantifyResult(table, summary, out_dir, files, skipped, unconverged, delta)


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
        table.add_row(short_name(str(r["class"])), str(r["n"]), iqr(r, "nucleus_pos_share"),
                      iqr(r, "nucleus_area_share"), f"{r['nucleus_enrichment_mean']:.2f}", iqr(r, "nucleus_enrichment"),
                      f"{r['nucleus_change_enrichment_median']:.2f}", iqr(r, "nucleus_top10"),
                      end_section=r["class"] == summary["class"].iloc[-2] if len(summary) > 1 else False)
    return table


# ---------------------------------------------------------------------------------------------
# compare-explanations: the poster's Fig. 7, the same cells explained by several runs


def pick_cells(items: pd.DataFrame, classes: Sequence[str], per_class: int, seed: int = 0) -> pd.DataFrame:
    """`per_class` items of each class (task order), drawn reproducibly: the same table and seed give the same cells.

    Items are sorted by path before drawing, so the row order of `items` does not matter; a
    class with fewer items gives all it has. Returns the picked rows, class by class.
    """
    if per_class < 1:
        raise SettingError("{per_class} {value} must be at least 1", per_class)
    rng = np.random.default_rng(seed)
    picked = []
    for name in classes:
        pool = items[items["label"] == name].sort_values("path")
        take = rng.choice(len(pool), size=min(per_class, len(pool)), replace=False) if len(pool) else []
        picked.append(pool.iloc[np.sort(np.asarray(take, int))])
    return pd.concat(picked, ignore_index=True)


def short_labels(paths: Sequence[Path]) -> list[str]:
    """The fewest trailing path parts that tell the runs apart, e.g. 'cls/fold0' and 'cls_reg/fold0'."""
    parts = [Path(p).resolve().parts for p in paths]
    for k in range(1, max(len(p) for p in parts) + 1):
        labels = ["/".join(p[-k:]) for p in parts]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


@dataclass
class ComparisonResult:
    """What `compare_explanations` drew: the figure and one row per (cell, run)."""

    figure: Path
    table: pd.DataFrame  # cell, label, run, predicted, score, delta, relative_delta, nucleus_pos_share


def compare_explanations(runs: Sequence, out: str | Path, per_class: int = 2, seed: int = 0,
                         labels: Sequence[str] | None = None, data: str | Path | None = None,
                         settings: IGSettings = IGSettings(), dpi: int = 200,
                         progress: bool = True) -> ComparisonResult:
    """The poster's Fig. 7: the same held-out cells (`per_class` per class) explained by each run, in one PNG.

    The cells are those held out by every run (their common held-out fold, with a mask), drawn
    by `pick_cells`; each row is a cell, each column a run: the IG overlay with the nucleus
    outlined from the mask. Also writes the rows as `out` with the suffix `.csv`.

    Raises:
        HerlevError: no run, runs of different tasks, no held-out cell with a mask common to all runs.
    """
    from herlev_fa.explanation.masks import read_mask
    from herlev_fa.figures import explanation_grid_png
    from herlev_fa.runs import load_run

    if not runs:
        raise HerlevError("no run given: pass one or more run folders")
    runs = [load_run(r) for r in runs]
    labels = list(labels) if labels else short_labels([r.path for r in runs])
    if len(labels) != len(runs):
        raise HerlevError(f"{len(labels)} label(s) for {len(runs)} run(s): give one --label per run, or none")
    classes = runs[0].task.classes
    if any(r.task.classes != classes for r in runs):
        raise HerlevError("the runs have different classes; compare runs of the same task")
    held = [quantify_items(r, data, "valid")[0] for r in runs]
    common = set(held[0]["rel"]).intersection(*(set(h["rel"]) for h in held[1:]))
    if not common:
        raise HerlevError("the runs hold out no common cell with a mask: compare runs of the same fold "
                          "(same data, folds and seed)")
    cells = pick_cells(held[0][held[0]["rel"].isin(common)], classes, per_class, seed)
    paths = list(cells["path"])
    explained: list[list[Explanation]] = []  # [run][cell]
    bar, advance = progress_bar(progress, "explaining", len(paths) * len(runs))
    with bar:
        for r in runs:
            explained.append([])
            for e in iter_explanations(r, paths, settings):
                explained[-1].append(e)
                advance(1)
    images = [e.image for e in explained[0]]
    nuclei = [read_mask(m) == NUCLEUS for m in cells["mask"]]  # [H, W] each, the image's grid
    rows, notes = [], []
    for i, cell in enumerate(cells.itertuples(index=False)):
        line = []
        for label, run_results in zip(labels, explained):
            e = run_results[i]
            positive = np.clip(e.attribution, 0, None)
            share = float(positive[nuclei[i]].sum() / positive.sum()) if positive.sum() > 0 else np.nan
            rows.append({"cell": Path(cell.path).stem, "label": cell.label, "run": label, "method": e.method,
                         "predicted": e.predicted,
                         "score": e.score, "delta": e.delta, "relative_delta": e.relative_delta,
                         "precision": e.precision, "nucleus_pos_share": share})
            line.append(f"{short_name(e.predicted)}, s={e.score:.1f}, nuc {share:.0%}")
        notes.append(line)
    row_labels = [f"{short_name(c.label)}\n{Path(c.path).stem}" for c in cells.itertuples(index=False)]  # the whole id
    used = precisions_used([r["precision"] for r in rows])
    title = f"{METHOD_NAMES[settings.method]}, {settings.describe(used)}; gold: nucleus (mask)"
    maps = [[run_results[i].attribution for run_results in explained] for i in range(len(paths))]  # [cell][run]
    figure = explanation_grid_png(out, images, nuclei, maps, row_labels, labels, notes=notes, title=title, dpi=dpi)
    table = pd.DataFrame(rows)
    with atomic_path(Path(out).with_suffix(".csv")) as tmp:
        table.to_csv(tmp, index=False)
    warn_unconverged([f"{r['cell']} ({r['run']})" for r in rows], table["relative_delta"].tolist(), settings.steps,
                     settings.tol)
    return ComparisonResult(figure, table)

"""Faithfulness: deletion and insertion curves with ROAD-style imputation (`herlev faithfulness RUN`).

What this is: for each held-out cell and attribution method, the image's pixels are removed (deletion)
or put back (insertion) in four orders, and the explained output (the trained model's explained
column) is followed along the way:

* most relevant first (MoRF): by signed attribution, highest first; ties in pixel order;
* least relevant first (LeRF): the reverse;
* random: a seeded random order (the reference a map must beat);
* nucleus first: the nucleus pixels of the mask (in random order), then the rest (random): does
  removing the nucleus itself drop the score as much as removing what the map ranks first?

A removed pixel is not set to a constant (a hole the model has never seen, which it may react to
whatever was there) but *imputed* from its neighbours, in the spirit of ROAD (Rong et al., *A
Consistent and Efficient Evaluation Strategy for Attribution Methods*, ICML 2022), whose noisy
linear imputation sets each removed pixel to the weighted mean of its 8 neighbours (1/6 for the
4 direct ones, 1/12 for the diagonals), solved as one sparse linear system: `impute` fills the
removed pixels from the known ones inwards by the same weighted neighbour mean (a normalised
convolution), then relaxes them with `IMPUTE_ITERATIONS` Jacobi sweeps of that mean (the
iterative solution of the same system), without ROAD's noise. With every pixel removed there
is nothing to impute from: the image becomes the `mean` baseline (zero after normalisation).

The output is normalised per cell: (f(x_t) - f(x_empty)) / (f(x) - f(x_empty)), 1 at the image
and 0 with every pixel removed; cells with |f(x) - f(x_empty)| below `GAP_FLOOR` are left out.
The area under each curve (trapezoid over the fractions) summarises it: a faithful map has a small
deletion area and a large insertion area under MoRF, the reverse under LeRF, and random between.

What it is not: the attribution methods (``explain.attribution``, ``explain.methods``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from herlev_fa.atomic import atomic_path, write_text
from herlev_fa.config import IGSettings

ORDERS = ("most relevant first", "least relevant first", "random", "nucleus first")
CURVES = ("deletion", "insertion")
FRACTIONS = tuple(np.round(np.linspace(0, 1, 11), 10))
IMPUTE_ITERATIONS = 16
GAP_FLOOR = 0.1  # |f(x) - f(x_empty)| below this: the curve cannot be normalised, the cell is left out
ORDER_SEED = 0
# ROAD's neighbour weights: 1/6 for the 4 direct neighbours, 1/12 for the diagonals (they sum to 1)
NEIGHBOURS = torch.tensor([[1 / 12, 1 / 6, 1 / 12], [1 / 6, 0.0, 1 / 6], [1 / 12, 1 / 6, 1 / 12]])


def impute(x: Tensor, removed: Tensor, iterations: int = IMPUTE_ITERATIONS) -> Tensor:
    """Removed pixels of x [B, C, H, W] replaced by the weighted mean of their neighbours; `removed` [B, H, W] bool.

    Filled from the known pixels inwards (each round, every removed pixel with a known or filled
    neighbour gets their weighted mean), then `iterations` Jacobi sweeps of the neighbour mean over
    the removed pixels (known pixels never change). An image with no known pixel becomes zeros.
    """
    b, c, h, w = x.shape
    kernel = NEIGHBOURS.to(x.device, x.dtype).view(1, 1, 3, 3)

    def neighbour_sum(t: Tensor) -> Tensor:  # [B, K, H, W] -> [B, K, H, W], zero outside the image
        k = t.shape[1]
        return torch.nn.functional.conv2d(t.reshape(b * k, 1, h, w), kernel, padding=1).view(b, k, h, w)

    gone = removed[:, None].to(x.dtype)  # [B, 1, H, W]
    known = 1 - gone
    out = x * known
    filled = known.clone()
    for _ in range(h + w):  # inwards: at most the image's span
        if bool((filled > 0).all()):
            break
        weight = neighbour_sum(filled)  # [B, 1, H, W]
        grow = (filled == 0) & (weight > 0)
        if not bool(grow.any()):
            break  # images with no known pixel at all stay zero
        mean = neighbour_sum(out * filled) / weight.clamp(min=1e-12)  # [B, C, H, W]
        out = torch.where(grow, mean, out)
        filled = torch.where(grow, torch.ones_like(filled), filled)
    weight = neighbour_sum(filled).clamp(min=1e-12)
    for _ in range(iterations):
        out = torch.where(gone > 0, neighbour_sum(out * filled) / weight, out)
    return out


def orders(attr: np.ndarray, nucleus: np.ndarray, keep: np.ndarray, seed: int = ORDER_SEED) -> dict[str, np.ndarray]:
    """The pixel orders of `ORDERS` for one map: name -> [n] flat indices of the kept pixels, first removed first.

    Args:
        attr: [H, W] signed attribution. nucleus, keep: [H, W] bool (the mask's nucleus; the pixels to remove).
    """
    idx = np.flatnonzero(keep.ravel())  # [n]
    a = np.asarray(attr, np.float64).ravel()[idx]
    most = idx[np.argsort(-a, kind="stable")]
    rng = np.random.default_rng(seed)
    shuffled = idx[rng.permutation(len(idx))]
    in_nucleus = nucleus.ravel()[shuffled]
    return {"most relevant first": most, "least relevant first": most[::-1].copy(), "random": shuffled,
            "nucleus first": np.concatenate([shuffled[in_nucleus], shuffled[~in_nucleus]])}


def removal_masks(order: np.ndarray, shape: tuple[int, int], fractions: Sequence[float], curve: str) -> np.ndarray:
    """[F, H, W] bool: the pixels removed at each fraction; deletion removes the first k of `order`, insertion all
    but the first k (k = round(fraction x n))."""
    n = len(order)
    out = np.zeros((len(fractions), shape[0] * shape[1]), bool)
    for i, f in enumerate(fractions):
        k = int(round(f * n))
        out[i, order[:k] if curve == "deletion" else order[k:]] = True
    return out.reshape(len(fractions), *shape)


def area(fractions: Sequence[float], values: np.ndarray) -> np.ndarray:
    """Trapezoid area under curves values [..., F] over `fractions` [F] -> [...]."""
    f = np.asarray(fractions, np.float64)
    v = np.asarray(values, np.float64)
    return ((v[..., 1:] + v[..., :-1]) / 2 * np.diff(f)).sum(axis=-1)


@dataclass
class FaithfulnessResult:
    """What `faithfulness` wrote and found."""

    table: pd.DataFrame  # one row per (method, cell, curve, order): the area, the gap
    curves: pd.DataFrame  # one row per (method, cell, curve, order, fraction): the normalised output
    summary: pd.DataFrame  # per (method, curve, order): mean area, cells
    files: list[Path]


def faithfulness(run, methods: Sequence[str], out: str | Path | None = None, settings: IGSettings = IGSettings(),
                 data: str | Path | None = None, limit: int = 32, split: str = "valid",
                 fractions: Sequence[float] = FRACTIONS,
                 log: Callable[[str], None] | None = None) -> FaithfulnessResult:
    """Deletion and insertion curves of each method's maps on `limit` held-out cells of a fold run.

    Writes OUT/faithfulness.csv (areas per method, cell, curve, order), OUT/curves.csv (the
    curves), OUT/faithfulness.md (mean areas) and OUT/faithfulness.png; OUT defaults to
    RUN/faithfulness.

    Raises:
        HerlevError: bad run or settings, no held-out cell with a mask.
    """
    from herlev_fa.config import resolve_device
    from herlev_fa.data.images import normalise
    from herlev_fa.explanation.attribution import explainer_for, target_column
    from herlev_fa.explanation.masks import NUCLEUS
    from herlev_fa.explanation.sanity import masked_cells
    from herlev_fa.figures import faithfulness_png

    run, items, images, regions, keep = masked_cells(run, data, split, limit)  # [N, S, S, 3], [N, S, S], [N, S, S]
    out_dir = Path(out) if out is not None else run.path / "faithfulness"
    device = resolve_device(settings.device)
    column = target_column(settings.target, run.head, run.task.classes)
    s = run.size
    rows, curve_rows = [], []
    for method in methods:
        explainer = explainer_for(run, settings, method=method)
        first = len(rows)
        for i in range(0, len(items), settings.bs):
            batch = explainer.attribute(images[i:i + settings.bs], column)
            maps = batch.attribution.cpu().numpy()  # [B, S, S]
            x = normalise(torch.from_numpy(images[i:i + settings.bs]).to(device), run.mean, run.std)  # [B, 3, S, S]
            for j in range(len(maps)):
                cell = i + j
                t = int(batch.target[j])
                cell_orders = orders(maps[j], regions[cell] == NUCLEUS, keep[cell], seed=ORDER_SEED + cell)
                removed = np.stack([removal_masks(o, (s, s), fractions, curve)
                                    for curve in CURVES for o in cell_orders.values()])  # [2 x 4, F, S, S]
                removed_t = torch.from_numpy(removed.reshape(-1, s, s)).to(device)  # [2 x 4 x F, S, S]
                outputs = []
                with torch.no_grad():
                    for k in range(0, len(removed_t), 128):
                        part = removed_t[k:k + 128]
                        xs = impute(x[j:j + 1].expand(len(part), -1, -1, -1), part)  # [P, 3, S, S]
                        outputs.append(explainer.outputs(xs)[:, t].float().cpu())
                    full = float(explainer.outputs(x[j:j + 1])[0, t])
                    empty = float(explainer.outputs(impute(x[j:j + 1], torch.ones_like(removed_t[:1])))[0, t])
                values = torch.cat(outputs).numpy().reshape(len(CURVES), len(ORDERS), len(fractions))
                gap = full - empty
                normalised = (values - empty) / gap if abs(gap) >= GAP_FLOOR else np.full_like(values, np.nan)
                areas = area(fractions, normalised)  # [2, 4]
                name = Path(items["path"].iloc[cell]).stem
                for c, curve in enumerate(CURVES):
                    for o, order in enumerate(ORDERS):
                        rows.append({"method": method, "cell": name, "label": items["label"].iloc[cell],
                                     "curve": curve, "order": order, "area": float(areas[c, o]), "gap": gap})
                        curve_rows += [{"method": method, "cell": name, "curve": curve, "order": order,
                                        "fraction": float(f), "output": float(normalised[c, o, q])}
                                       for q, f in enumerate(fractions)]
        for row in rows[first:]:  # the attribution's time per cell, beside the curves
            row["seconds_per_cell"] = explainer.attribution_seconds / max(1, explainer.attributed)
        if log is not None:
            log(f"{method}: curves of {len(items)} cells")
    table, curves = pd.DataFrame(rows), pd.DataFrame(curve_rows)
    summary = summarize_faithfulness(table)
    files = [out_dir / "faithfulness.csv", out_dir / "curves.csv", out_dir / "faithfulness.md",
             out_dir / "faithfulness.png"]
    with atomic_path(files[0]) as tmp:
        table.to_csv(tmp, index=False)
    with atomic_path(files[1]) as tmp:
        curves.to_csv(tmp, index=False)
    write_text(files[2], faithfulness_markdown(summary, f"run {run.path.name}, {len(items)} held-out cells, "
                                                        f"{settings.describe('fp32')} (method per row)"))
    faithfulness_png(files[3], curves, title=f"Deletion / insertion with neighbour imputation, {run.path.name}")
    return FaithfulnessResult(table, curves, summary, files)


def summarize_faithfulness(table: pd.DataFrame) -> pd.DataFrame:
    """Per method, curve and order: cells with a usable gap, mean and median area."""
    usable = table[np.isfinite(table["area"])]
    return usable.groupby(["method", "curve", "order"], sort=False).agg(
        cells=("cell", "size"), area=("area", "mean"), area_median=("area", "median")).reset_index()


def faithfulness_markdown(summary: pd.DataFrame, title: str) -> str:
    """Mean areas as markdown: a row per method, a column per order, one table per curve; and MoRF's margin over
    random and LeRF (deletion: how much lower; insertion: how much higher)."""
    lines = [f"# Faithfulness: {title}", "",
             "Area under the normalised output (1 = the image, 0 = every pixel removed) over the fraction of pixels "
             "removed (deletion) or inserted (insertion), removed pixels imputed from their neighbours. Deletion: "
             "lower under most-relevant-first is more faithful; insertion: higher.", ""]
    for curve in CURVES:
        part = summary[summary["curve"] == curve].pivot(index="method", columns="order", values="area")
        part = part.reindex(index=list(dict.fromkeys(summary["method"])), columns=list(ORDERS))
        sign = 1 if curve == "insertion" else -1
        lines += [f"## {curve}", "", "| method | " + " | ".join(ORDERS) + " | MoRF vs random | MoRF vs LeRF |",
                  "|---|" + "---:|" * (len(ORDERS) + 2)]
        for method, r in part.iterrows():
            margin = [sign * (r["most relevant first"] - r[other]) for other in ("random", "least relevant first")]
            lines.append(f"| {method} | " + " | ".join(f"{v:.3f}" for v in r.to_numpy())
                         + " | " + " | ".join(f"{m:+.3f}" for m in margin) + " |")
        lines.append("")
    return "\n".join(lines)

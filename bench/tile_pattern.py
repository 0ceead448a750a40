"""Why a small ResNet's attribution maps sit on a fixed grid: the stride-32 lattice, measured on real cells.

Run (a few minutes on 2 CPU cores for a 64 px ResNet-18 and 48 held-out cells):

    python bench/tile_pattern.py RUN [--compare RUN2] [--data DIR] [--out docs/img/tile_pattern.png] [--limit N]

For held-out cells of RUN (a fold run) it computes IG (the tool's defaults) under these
conditions and prints, for each, how much of the mean |IG| lies near the points of the lattice
of the network's total stride (multiples of 32 px for a ResNet, anchored at the top-left pixel),
against the area of those pixels:

* `trained`: the run's model on its own input size;
* `shifted`: the same cells translated by half a lattice period (edge pixels replicated); if the
  map follows the cell, the hot spots move with it; if they stay, the network's grid sets them;
* `untrained`: the same architecture with timm's initialisation (random convolutions, the last
  BatchNorm of each residual block at zero): the grid the architecture imposes before training;
* `--compare RUN2`: another fold run on the same cells (e.g. the same recipe with a ResNet-D,
  whose downsampling shortcuts average 2 x 2 pixels instead of reading one of them).

It also reports the share of the mean |IG| on the 8 px along the right and bottom borders, and
the median nucleus enrichment on each cell's own nucleus mask against another cell's, and draws
the figure: four cells' maps per run, the mean |IG| per condition with the lattice points marked.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import cv2
import numpy as np
import torch

from herlev_fa.config import IGSettings
from herlev_fa.explanation.attribution import Explainer, explainer_for
from herlev_fa.explanation.masks import NUCLEUS
from herlev_fa.explanation.report import masked_batch, quantify_items
from herlev_fa.runs import load_run

STRIDE = 32  # total stride of a ResNet's last stage
NEAR = 5  # pixels from a lattice point that count as "on the lattice"


def lattice_mask(size: int, stride: int = STRIDE, near: int = NEAR) -> np.ndarray:
    """[S, S] bool: pixels within `near` px (in both axes) of a point (i * stride, j * stride) inside the image."""
    points = np.arange(0, size, stride)
    axis = (np.abs(np.arange(size)[:, None] - points[None, :]) <= near).any(axis=1)  # [S]
    return axis[:, None] & axis[None, :]


def lattice_enrichment(mean_abs: np.ndarray, stride: int = STRIDE) -> float:
    """Share of the map's mass on the lattice pixels / their share of the area (1: no preference)."""
    on = lattice_mask(mean_abs.shape[0], stride)
    return float(mean_abs[on].sum() / mean_abs.sum() / on.mean())


def shifted(images: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """[B, S, S, 3] (or [B, S, S]) uint8 translated by (dx, dy) px, edges replicated (as the letterbox pads)."""
    m = np.float32([[1, 0, dx], [0, 1, dy]])
    s = images.shape[1]
    return np.stack([cv2.warpAffine(im, m, (s, s), borderMode=cv2.BORDER_REPLICATE, flags=cv2.INTER_NEAREST)
                     for im in images])


def enrichment(maps: np.ndarray, nucleus: np.ndarray) -> np.ndarray:
    """[B] nucleus share of the positive attribution / nucleus area share."""
    pos = np.clip(maps, 0, None).reshape(len(maps), -1)
    nuc = nucleus.reshape(len(maps), -1)
    return (pos * nuc).sum(1) / np.maximum(pos.sum(1), 1e-12) / np.maximum(nuc.mean(1), 1e-12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("--compare", type=Path, default=None,
                        help="A second fold run (e.g. a ResNet-D) explained on the same cells.")
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/img/tile_pattern.png"))
    parser.add_argument("--limit", type=int, default=48, help="held-out cells for the mean maps (0: all)")
    args = parser.parse_args()
    from herlev_fa.explanation.sanity import cells_of

    torch.manual_seed(0)
    run = load_run(args.run)
    items = cells_of(quantify_items(run, args.data, "valid")[0], args.limit)
    s = run.size
    settings = IGSettings(device="cpu", precision="fp32")
    images, regions, _ = masked_batch(items, s)  # [N, S, S, 3], [N, S, S]
    nucleus = regions == NUCLEUS

    def ig(explainer: Explainer, x: np.ndarray) -> np.ndarray:
        return np.concatenate([explainer(x[i:i + 16]).attribution for i in range(0, len(x), 16)])  # [N, S, S]

    untrained_model = copy.deepcopy(run.model)
    for module in untrained_model.net.modules():  # timm's own initialisation, as at the start of training
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()
    if hasattr(untrained_model.net, "init_weights"):
        untrained_model.net.init_weights()
    untrained = Explainer(untrained_model, run.head, run.task.classes, run.task.severities, run.mean, run.std, s)
    half = STRIDE // 2
    maps = {"trained": ig(explainer_for(run, settings), images),
            f"shifted +{half} px": ig(explainer_for(run, settings), shifted(images, half, half)),
            "untrained (timm init)": ig(untrained, images)}
    if args.compare is not None:
        other = load_run(args.compare)
        maps[f"{other.path.name}"] = ig(explainer_for(other, settings), images)
    print(f"{len(items)} held-out cells of {args.run} ({s} px); lattice: multiples of {STRIDE} px, +-{NEAR} px "
          f"({lattice_mask(s).mean():.1%} of the pixels)")
    print(f"{'condition':<24} {'lattice enrichment':>18} {'right+bottom 8 px':>18} {'own / other nucleus':>20}")
    rng = np.random.default_rng(0)
    partner = rng.permutation(len(items))
    for name, m in maps.items():
        mean_abs = np.abs(m).mean(axis=0)
        edge = (mean_abs[:, -8:].mean() + mean_abs[-8:, :].mean()) / 2 / mean_abs.mean()
        masks = shifted(nucleus.astype(np.uint8), half, half) > 0 if name.startswith("shifted") \
            else nucleus  # the nucleus moved with the cell
        own, other_nucleus = enrichment(m, masks), enrichment(m, masks[partner])
        print(f"{name:<24} {lattice_enrichment(mean_abs):>18.2f} {edge:>18.2f} "
              f"{np.median(own):>9.2f} / {np.median(other_nucleus):.2f}")
    draw(args.out, images, nucleus, maps, items, s)
    print(f"figure: {args.out}")


def draw(path: Path, images: np.ndarray, nucleus: np.ndarray, maps: dict[str, np.ndarray], items, size: int) -> None:
    from herlev_fa.figures import _figure, save_png

    labels = items["label"].to_numpy()
    picks = [i for c in ("carcinoma_in_situ", "normal") for i in np.flatnonzero(labels == c)[:2]]
    rows = [name for name in maps if name not in ("untrained (timm init)",) and not name.startswith("shifted")]
    fig = _figure(figsize=(13, 3.3 * (len(rows) + 1)), layout="constrained")
    axes = fig.subplots(len(rows) + 1, 4)
    for r, name in enumerate(rows):
        for ax, i in zip(axes[r], picks):
            m = maps[name][i]
            vmax = float(np.percentile(np.abs(m), 99.5)) or 1.0
            ax.imshow(images[i].mean(axis=2), cmap="gray", vmin=0, vmax=255)
            ax.imshow(m, cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=np.clip(np.abs(m) / vmax, 0, 1))
            ax.contour(nucleus[i], levels=[0.5], colors="gold", linewidths=1)
            ax.set_title(f"{name}: IG, {labels[i][:12]}", fontsize=9)
    for ax, (name, m) in zip(axes[-1], maps.items()):
        mean_abs = np.abs(m).mean(axis=0)
        ax.imshow(mean_abs, cmap="magma")
        points = np.arange(0, mean_abs.shape[0], STRIDE)
        ax.scatter(*np.meshgrid(points, points), s=14, c="cyan", marker="+")
        ax.set_title(f"mean |IG| over {len(m)} cells: {name}\nlattice enrichment {lattice_enrichment(mean_abs):.2f}",
                     fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(f"IG on the stride-{STRIDE} lattice, {size} px, held-out real cells (gold: nucleus; "
                 f"cyan +: multiples of {STRIDE} px)", fontsize=10)
    save_png(fig, path)


if __name__ == "__main__":
    main()

"""Why a small ResNet's attribution maps sit on a fixed grid: the stride-32 lattice, measured on real cells.

Run (a few minutes on 2 CPU cores for a 64 px ResNet-18 and a fold's 184 held-out cells):

    python bench/tile_pattern.py RUN [--data DIR] [--out docs/img/tile_pattern.png] [--limit N]

For the held-out cells of RUN (a fold run) it computes IG (the tool's defaults) under four
conditions and prints, for each, how much of the mean |IG| lies near the points of the lattice
of the network's total stride (multiples of 32 px for a ResNet, anchored at the top-left pixel),
against the area of those pixels:

* `trained`: the run's model on its own input size;
* `shifted`: the same cells translated by half a lattice period (edge pixels replicated); if the
  map follows the cell, the hot spots move with it; if they stay, the network's grid sets them;
* `untrained`: the same architecture with random weights (timm's initialisation): the grid the
  architecture imposes before any training;
* `2x size`: the trained model fed the cells letterboxed to twice its size (the lattice period
  stays 32 px, so it gets finer relative to the cell).

It also reports the nucleus enrichment on each cell's own nucleus mask against the one on another
cell's mask (`nucleus_enrichment_other` of quantify), and draws the figure: four cells' maps, the
mean |IG| per condition with the lattice points marked.
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
    """[B, S, S, 3] uint8 translated by (dx, dy) px, edges replicated (as the letterbox pads)."""
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
    parser.add_argument("--data", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path("docs/img/tile_pattern.png"))
    parser.add_argument("--limit", type=int, default=0, help="held-out cells to use (0: all)")
    args = parser.parse_args()
    torch.manual_seed(0)
    run = load_run(args.run)
    items, _ = quantify_items(run, args.data, "valid")
    items = items.sort_values("path").reset_index(drop=True)
    if args.limit:
        items = items.iloc[np.linspace(0, len(items) - 1, args.limit).round().astype(int)].reset_index(drop=True)
    s = run.size
    settings = IGSettings(device="cpu", precision="fp32")
    images, regions, _ = masked_batch(items, s)  # [N, S, S, 3], [N, S, S]
    big, big_regions, _ = masked_batch(items, 2 * s)
    nucleus = regions == NUCLEUS

    def ig(explainer: Explainer, x: np.ndarray) -> np.ndarray:
        return np.concatenate([explainer(x[i:i + 16]).attribution for i in range(0, len(x), 16)])  # [N, S, S]

    trained = explainer_for(run, settings)
    untrained_model = copy.deepcopy(run.model)
    for module in untrained_model.modules():
        if hasattr(module, "reset_parameters") and module is not untrained_model:
            module.reset_parameters()
    net = untrained_model.net
    if hasattr(net, "init_weights"):
        net.init_weights()
    untrained = Explainer(untrained_model, run.head, run.task.classes, run.task.severities, run.mean, run.std, s)
    big_explainer = Explainer(run.model, run.head, run.task.classes, run.task.severities, run.mean, run.std, 2 * s)
    half = STRIDE // 2
    maps = {
        "trained": ig(trained, images),
        f"shifted +{half} px": ig(trained, shifted(images, half, half)),
        "untrained": ig(untrained, images),
        f"input {2 * s} px": ig(big_explainer, big),
    }
    print(f"{len(items)} held-out cells of {args.run} ({run.arch} {s} px); lattice: multiples of {STRIDE} px, "
          f"+-{NEAR} px")
    print(f"{'condition':<18} {'lattice enrichment':>18} {'on-lattice area':>16}")
    for name, m in maps.items():
        mean_abs = np.abs(m).mean(axis=0)
        print(f"{name:<18} {lattice_enrichment(mean_abs):>18.2f} {lattice_mask(mean_abs.shape[0]).mean():>16.1%}")
    own = enrichment(maps["trained"], nucleus)
    rng = np.random.default_rng(0)
    other = enrichment(maps["trained"], nucleus[rng.permutation(len(items))])
    print(f"nucleus enrichment (trained, {s} px): own nucleus median {np.median(own):.2f}, another cell's nucleus "
          f"median {np.median(other):.2f}, own > other in {np.mean(own > other):.0%} of cells")
    big_own = enrichment(maps[f"input {2 * s} px"], big_regions == NUCLEUS)
    print(f"nucleus enrichment at {2 * s} px input: median {np.median(big_own):.2f}")
    draw(args.out, images, nucleus, maps, items, s)
    print(f"figure: {args.out}")


def draw(path: Path, images: np.ndarray, nucleus: np.ndarray, maps: dict[str, np.ndarray], items, size: int) -> None:
    from herlev_fa.figures import _figure, save_png

    picks = [i for c in ("carcinoma_in_situ", "normal") for i in np.flatnonzero(items["label"].to_numpy() == c)[:2]]
    fig = _figure(figsize=(13, 6.6))
    axes = fig.subplots(2, 4)
    trained = maps["trained"]
    for ax, i in zip(axes[0], picks):
        vmax = float(np.percentile(np.abs(trained[i]), 99.5)) or 1.0
        ax.imshow(images[i].mean(axis=2), cmap="gray", vmin=0, vmax=255)
        ax.imshow(trained[i], cmap="RdBu_r", vmin=-vmax, vmax=vmax, alpha=np.clip(np.abs(trained[i]) / vmax, 0, 1))
        ax.contour(nucleus[i], levels=[0.5], colors="gold", linewidths=1)
        ax.set_title(f"{items['label'].iloc[i][:12]}: IG", fontsize=9)
    for ax, (name, m) in zip(axes[1], maps.items()):
        mean_abs = np.abs(m).mean(axis=0)
        ax.imshow(mean_abs, cmap="magma")
        points = np.arange(0, mean_abs.shape[0], STRIDE)
        ax.scatter(*np.meshgrid(points, points), s=12, c="cyan", marker="+")
        ax.set_title(f"mean |IG|, {name}\nlattice enrichment {lattice_enrichment(mean_abs):.2f}", fontsize=9)
    for ax in axes.ravel():
        ax.set_axis_off()
    fig.suptitle(f"Attribution on the stride-{STRIDE} lattice: {size} px ResNet, held-out real cells "
                 "(gold: nucleus; cyan +: multiples of 32 px)", fontsize=10)
    save_png(fig, path)


if __name__ == "__main__":
    main()

"""How much of an attribution map falls on each mask region: pure functions on arrays.

What this is: the numbers behind `herlev quantify`. Given an attribution map [H, W] and the
region codes of the same grid (``explain.masks``: BACKGROUND, CYTOPLASM, NUCLEUS, BORDER,
OTHER), `region_shares` returns, per region, its share of the positive attribution mass, its
share of the absolute attribution, and its share of the area; then the nucleus enrichment
(positive share / area share: 1 = the nucleus gets what its size alone would give it) and the
fraction of the top 5% / 10% most attributed pixels that lie in the nucleus.

Choices, stated once:

* The grid is the model's letterboxed one (the mask carried through the same `letterbox`),
  so the attributions are captum's own numbers, not interpolated ones; the letterbox padding
  is left out (`keep`), since no annotator labelled it and it is not part of the image.
* The grey BORDER band and stray OTHER colours are regions of their own: they are counted in
  the denominators (they are image pixels the model saw) but are neither nucleus nor
  cytoplasm. Their shares are reported so that a reader can see how much they take.
* "Most attributed" ranks pixels by signed attribution, highest first (the strongest evidence
  *for* the explained output); k = ceil(q * n) pixels, ties broken by pixel order.

`region_shares_batch` and `padding_share_batch` compute the same numbers for a whole batch as
tensor operations on the maps' device (what `quantify` runs); the per-image functions are the
reference they are tested against.

What it is not: computing attributions (``explain.attribution``) or reading masks.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from herlev_fa.explanation.masks import NUCLEUS, REGION_NAMES

TOP_FRACTIONS = (0.05, 0.10)


def region_shares(attr: np.ndarray, regions: np.ndarray, keep: np.ndarray | None = None) -> dict[str, float]:
    """Attribution and area shares of each mask region, and the nucleus summaries.

    Args:
        attr: [H, W] attribution (signed).
        regions: [H, W] region codes (``explain.masks``), same grid.
        keep: [H, W] bool, the pixels to count (default: all); e.g. the letterbox content.

    Returns:
        For each region r of ``REGION_NAMES``: `r_pos_share` (share of the positive mass; NaN
        when no pixel is positive), `r_abs_share` (share of sum |attr|; NaN when all zero),
        `r_area_share`; then `nucleus_enrichment` (= nucleus_pos_share / nucleus_area_share),
        `nucleus_abs_enrichment` (same with the absolute share), both NaN without nucleus pixels,
        and `nucleus_top5` / `nucleus_top10` (fraction of the top 5% / 10% pixels in the nucleus).
    """
    attr = np.asarray(attr, dtype=np.float64)
    regions = np.asarray(regions)
    if attr.shape != regions.shape or attr.ndim != 2:
        raise ValueError(f"attribution {attr.shape} and regions {regions.shape} must be the same [H, W] grid")
    if keep is None:
        keep = np.ones(attr.shape, bool)
    elif keep.shape != attr.shape:
        raise ValueError(f"keep {keep.shape} must match the attribution grid {attr.shape}")
    a = attr[keep]  # [N] kept pixels
    r = regions[keep].astype(np.int64)  # [N]
    n_regions = len(REGION_NAMES)
    if a.size == 0:
        raise ValueError("no pixel to count (keep is all False)")
    if r.min() < 0 or r.max() >= n_regions:
        raise ValueError(f"region codes must be 0..{n_regions - 1}, found {r.min()}..{r.max()}")
    pos = np.bincount(r, weights=np.clip(a, 0, None), minlength=n_regions)  # [R]
    absolute = np.bincount(r, weights=np.abs(a), minlength=n_regions)
    area = np.bincount(r, minlength=n_regions) / a.size
    pos_share = pos / pos.sum() if pos.sum() > 0 else np.full(n_regions, np.nan)
    abs_share = absolute / absolute.sum() if absolute.sum() > 0 else np.full(n_regions, np.nan)
    out: dict[str, float] = {}
    for i, name in enumerate(REGION_NAMES):
        out[f"{name}_pos_share"] = float(pos_share[i])
        out[f"{name}_abs_share"] = float(abs_share[i])
        out[f"{name}_area_share"] = float(area[i])
    nucleus_area = area[NUCLEUS]
    out["nucleus_enrichment"] = float(pos_share[NUCLEUS] / nucleus_area) if nucleus_area > 0 else math.nan
    out["nucleus_abs_enrichment"] = float(abs_share[NUCLEUS] / nucleus_area) if nucleus_area > 0 else math.nan
    for q in TOP_FRACTIONS:
        out[f"nucleus_top{round(q * 100)}"] = top_fraction_in(a, r == NUCLEUS, q)
    return out


def top_fraction_in(values: np.ndarray, inside: np.ndarray, q: float) -> float:
    """Fraction of the ceil(q * N) highest `values` [N] that have `inside` [N] True (ties: earlier first)."""
    values = np.asarray(values).ravel()
    inside = np.asarray(inside, bool).ravel()
    if not 0 < q <= 1:
        raise ValueError(f"q must be in (0, 1], got {q}")
    k = max(1, math.ceil(q * values.size - 1e-9))
    order = np.argsort(-values, kind="stable")[:k]  # [k] indices of the highest values
    return float(inside[order].mean())


def padding_share(attr: np.ndarray, keep: np.ndarray) -> float:
    """Share of sum |attr| [H, W] that falls outside `keep` [H, W] (on the letterbox padding); NaN when all zero."""
    absolute = np.abs(np.asarray(attr, dtype=np.float64))
    total = absolute.sum()
    return float(absolute[~keep].sum() / total) if total > 0 else math.nan


def region_shares_batch(attr: torch.Tensor, regions: torch.Tensor, keep: torch.Tensor,
                        top: bool = True) -> dict[str, torch.Tensor]:
    """`region_shares` of a whole batch at once, as tensor operations on the maps' own device.

    Args:
        attr: [B, H, W] attribution (signed), any float dtype (computed in float64).
        regions: [B, H, W] region codes 0..len(REGION_NAMES) - 1 (any integer dtype), same device.
        keep: [B, H, W] bool, the pixels to count; at least one per image.
        top: also the top-k hit rates (`nucleus_top5`, `nucleus_top10`), the costly part.

    Returns:
        The keys of `region_shares` (without the top-k ones when `top` is False), each a float64
        tensor [B] on the input's device, equal to the per-image numbers (same NaN rules, same
        top-k ties: earlier pixel first).
    """
    if attr.ndim != 3 or regions.shape != attr.shape or keep.shape != attr.shape:
        raise ValueError(f"attribution {tuple(attr.shape)}, regions {tuple(regions.shape)} and keep "
                         f"{tuple(keep.shape)} must be the same [B, H, W] grid")
    n_regions = len(REGION_NAMES)
    b = attr.shape[0]
    a = attr.reshape(b, -1).double()  # [B, N]
    kept = keep.reshape(b, -1)  # [B, N]
    r = regions.reshape(b, -1).long()  # [B, N]
    n = kept.sum(dim=1)  # [B]
    if bool((n == 0).any()):
        raise ValueError("no pixel to count in some image (keep is all False)")
    slot = torch.where(kept, r, n_regions)  # [B, N]: the region, or one spare slot for the pixels not counted

    def per_region(values: torch.Tensor) -> torch.Tensor:  # [B, N] -> [B, R]: the sum over each region's pixels
        return a.new_zeros(b, n_regions + 1).scatter_add_(1, slot, values)[:, :n_regions]

    pos, absolute = per_region(a.clamp(min=0)), per_region(a.abs())  # [B, R]
    area = per_region(torch.ones_like(a)) / n[:, None]  # [B, R]
    nan = torch.tensor(math.nan, dtype=torch.float64, device=a.device)

    def shares(mass: torch.Tensor) -> torch.Tensor:  # [B, R] -> [B, R], NaN rows where the total is 0
        total = mass.sum(dim=1, keepdim=True)  # [B, 1]
        return torch.where(total > 0, mass / total.clamp(min=torch.finfo(torch.float64).tiny), nan)

    pos_share, abs_share = shares(pos), shares(absolute)
    out: dict[str, torch.Tensor] = {}
    for i, name in enumerate(REGION_NAMES):
        out[f"{name}_pos_share"] = pos_share[:, i]
        out[f"{name}_abs_share"] = abs_share[:, i]
        out[f"{name}_area_share"] = area[:, i]
    nucleus_area = area[:, NUCLEUS]
    has_nucleus = nucleus_area > 0
    out["nucleus_enrichment"] = torch.where(has_nucleus, pos_share[:, NUCLEUS] / nucleus_area.clamp(min=1e-300), nan)
    out["nucleus_abs_enrichment"] = torch.where(has_nucleus, abs_share[:, NUCLEUS] / nucleus_area.clamp(min=1e-300),
                                                nan)
    if not top:
        return out
    # the top k kept pixels by signed value, ties taken in pixel order (as a stable sort would): the pixels above
    # the k-th highest value, then the first of those equal to it; topk, not a full sort of every pixel
    ranked = a.masked_fill(~kept, -math.inf)  # [B, N]
    ks = {q: torch.ceil(q * n.double() - 1e-9).clamp(min=1).long() for q in TOP_FRACTIONS}  # [B] each
    highest = torch.topk(ranked, int(max(int(k.max()) for k in ks.values())), dim=1).values  # [B, K], descending
    nucleus = r == NUCLEUS  # [B, N]
    for q, k in ks.items():
        threshold = highest.gather(1, (k - 1)[:, None])  # [B, 1], the k-th highest value
        above, tied = ranked > threshold, ranked == threshold  # [B, N]
        first_tied = tied & (tied.cumsum(dim=1) <= (k - above.sum(dim=1))[:, None])  # [B, N]
        hits = (nucleus & (above | first_tied)).sum(dim=1)  # [B]
        out[f"nucleus_top{round(q * 100)}"] = hits.double() / k.double()
    return out


def padding_share_batch(attr: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """`padding_share` of a batch: [B, H, W] maps and [B, H, W] bool content -> float64 [B] (NaN when all zero)."""
    absolute = attr.abs().double().flatten(1)  # [B, H * W]
    total = absolute.sum(dim=1)  # [B]
    outside = (absolute * (~keep).flatten(1)).sum(dim=1)
    return torch.where(total > 0, outside / total.clamp(min=1e-300), math.nan)

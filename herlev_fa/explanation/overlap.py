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


# ---------------------------------------------------------------------------------------------
# Localisation metrics against one mask (the nucleus): the field's names for them

LOCALISATION_METRICS = {
    "pointing_game": "pointing game: the most attributed pixel lies in the nucleus (1 / 0)",
    "energy_pointing_game": "energy-based pointing game: nucleus share of the min-max normalised map",
    "relevance_mass_accuracy": "relevance mass accuracy: nucleus share of the positive attribution",
    "relevance_rank_accuracy": "relevance rank accuracy: fraction of the K most attributed pixels in the nucleus "
                               "(K = nucleus pixels)",
}


def localisation(attr: np.ndarray, inside: np.ndarray, keep: np.ndarray | None = None) -> dict[str, float]:
    """The localisation metrics of one map against one mask, the reference for `localisation_batch`.

    * pointing game (Zhang et al. 2018): 1 when the highest-attributed kept pixel (the first in
      pixel order on a tie) is inside the mask, else 0;
    * energy-based pointing game (Wang et al., Score-CAM, 2020): the map min-max normalised over the
      kept pixels, then the share of its sum inside the mask (NaN for a constant map);
    * relevance mass accuracy (Arras et al. 2022): share of the positive attribution inside the
      mask (= `nucleus_pos_share`; NaN without positive attribution);
    * relevance rank accuracy (Arras et al. 2022): with K the mask's pixel count, the fraction of
      the K highest-attributed pixels (signed, ties in pixel order) inside the mask.

    All NaN when the mask has no kept pixel.

    Args:
        attr: [H, W] attribution (signed). inside: [H, W] bool, the mask. keep: [H, W] bool, the pixels to
            count (default: all), e.g. the letterbox content.
    """
    keep = np.ones(attr.shape, bool) if keep is None else np.asarray(keep, bool)
    a = np.asarray(attr, np.float64)[keep]  # [N]
    m = np.asarray(inside, bool)[keep]  # [N]
    k = int(m.sum())
    if k == 0:
        return dict.fromkeys(LOCALISATION_METRICS, math.nan)
    span = a.max() - a.min()
    energy = (a - a.min()) / span if span > 0 else None
    positive = np.clip(a, 0, None)
    return {
        "pointing_game": float(m[int(np.argmax(a))]),
        "energy_pointing_game": float(energy[m].sum() / energy.sum()) if energy is not None else math.nan,
        "relevance_mass_accuracy": float(positive[m].sum() / positive.sum()) if positive.sum() > 0 else math.nan,
        "relevance_rank_accuracy": float(m[np.argsort(-a, kind="stable")[:k]].mean()),
    }


def localisation_batch(attr: torch.Tensor, inside: torch.Tensor, keep: torch.Tensor) -> dict[str, torch.Tensor]:
    """`localisation` of a whole batch as tensor operations on the maps' device.

    Args:
        attr: [B, H, W] attribution, any float dtype (computed in float64). inside: [B, H, W] bool, the mask.
        keep: [B, H, W] bool, the pixels to count; at least one per image.

    Returns:
        The keys of `LOCALISATION_METRICS`, each a float64 tensor [B] equal to the per-image numbers.
    """
    if attr.ndim != 3 or inside.shape != attr.shape or keep.shape != attr.shape:
        raise ValueError(f"attribution {tuple(attr.shape)}, mask {tuple(inside.shape)} and keep {tuple(keep.shape)} "
                         "must be the same [B, H, W] grid")
    b = attr.shape[0]
    a = attr.reshape(b, -1).double()  # [B, N]
    kept = keep.reshape(b, -1)  # [B, N]
    m = inside.reshape(b, -1) & kept  # [B, N]
    k = m.sum(dim=1)  # [B]
    nan = torch.tensor(math.nan, dtype=torch.float64, device=a.device)
    tiny = torch.finfo(torch.float64).tiny
    ranked = a.masked_fill(~kept, -math.inf)  # [B, N]
    pointing = m.gather(1, ranked.argmax(dim=1, keepdim=True))[:, 0].double()  # [B]; argmax: first of the maxima
    low = a.masked_fill(~kept, math.inf).min(dim=1, keepdim=True).values  # [B, 1]
    high = ranked.max(dim=1, keepdim=True).values
    span = high - low  # [B, 1]
    energy = torch.where(kept, (a - low) / span.clamp(min=tiny), 0.0)  # [B, N]
    energy_share = torch.where(span[:, 0] > 0, (energy * m).sum(dim=1) / energy.sum(dim=1).clamp(min=tiny), nan)
    positive = torch.where(kept, a.clamp(min=0), 0.0)  # [B, N]
    total = positive.sum(dim=1)
    mass = torch.where(total > 0, (positive * m).sum(dim=1) / total.clamp(min=tiny), nan)
    # the K highest kept pixels, ties in pixel order (as the stable sort): the pixels above the K-th value, then the
    # first of those equal to it
    kth = torch.sort(ranked, dim=1, descending=True).values.gather(1, (k.clamp(min=1) - 1)[:, None])  # [B, 1]
    above, tied = ranked > kth, ranked == kth  # [B, N]
    first_tied = tied & (tied.cumsum(dim=1) <= (k - above.sum(dim=1))[:, None])
    rank = (m & (above | first_tied)).sum(dim=1).double() / k.clamp(min=1).double()
    out = {"pointing_game": pointing, "energy_pointing_game": energy_share, "relevance_mass_accuracy": mass,
           "relevance_rank_accuracy": rank}
    return {name: torch.where(k > 0, v, nan) for name, v in out.items()}


def partners(groups: np.ndarray, seed: int = 0) -> np.ndarray:
    """For each of N items, another item of the same group, as a seeded random derangement within each group.

    Each group's items are shuffled into a cycle and each item gets the next one in it: no item is its own
    partner and every item is someone's partner once. An item alone in its group gets -1.

    Args:
        groups: [N] hashable group keys (e.g. 'HxW' of the image, so that masks share a grid).

    Returns:
        [N] int64 partner indices (-1 for an item alone in its group).
    """
    groups = np.asarray(groups)
    out = np.full(len(groups), -1, np.int64)
    rng = np.random.default_rng(seed)
    for key in sorted(set(groups.tolist()), key=str):
        members = np.flatnonzero(groups == key)
        if len(members) < 2:
            continue
        cycle = members[rng.permutation(len(members))]
        out[cycle] = np.roll(cycle, -1)
    return out

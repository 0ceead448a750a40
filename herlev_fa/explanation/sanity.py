"""The model-parameter randomisation test (Adebayo et al., *Sanity Checks for Saliency Maps*, NeurIPS 2018).

What this is: `herlev sanity RUN`. The network's stages are re-initialised from the top down,
cumulatively (the classifier first, then the last stage, ..., down to the stem: the "cascading"
randomisation), and at each step every method's maps of the same held-out cells, for the same
output (the trained model's explained column), are compared with the trained model's maps:

* Spearman's rank correlation of |map| (over the image's own pixels; average ranks for ties);
* SSIM of |map| scaled to [0, 1] by its maximum (Wang et al. 2004, 7 x 7 uniform window,
  K1 = 0.01, K2 = 0.03, sample covariance, the mean over the window positions inside the map:
  scikit-image's `structural_similarity` defaults, `ssim_batch`);
* the nucleus enrichment (`overlap.region_shares_batch`), which should fall to the baseline's
  level once the model no longer knows anything.

A method whose maps stay similar while the weights that produced the prediction are destroyed
explains the input, not the model: it fails the test. Re-initialisation is each module's own
`reset_parameters` (as Quantus' MPRT does), seeded; a BatchNorm becomes the identity.

What it is not: the attribution itself (``explain.attribution``, ``explain.methods``).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn

from herlev_fa.atomic import atomic_path, write_text
from herlev_fa.config import IGSettings
from herlev_fa.errors import HerlevError, SettingError

SSIM_WINDOW = 7
SSIM_K1, SSIM_K2 = 0.01, 0.03
RANDOMISATION_SEED = 0


# ---------------------------------------------------------------------------------------------
# Similarity of maps (pure)


def ssim_batch(a: Tensor, b: Tensor, data_range: float = 1.0, window: int = SSIM_WINDOW) -> Tensor:
    """Mean SSIM of each pair of maps a, b [B, H, W] (any float dtype; computed in float64) -> [B].

    scikit-image's `structural_similarity(a, b, data_range=..., win_size=window)` for 2-D float
    images: uniform window, K1 = 0.01, K2 = 0.03, sample covariance (N / (N - 1)), mean over the
    window positions that lie inside the map.
    """
    if a.shape != b.shape or a.ndim != 3 or min(a.shape[1:]) < window:
        raise ValueError(f"maps {tuple(a.shape)} and {tuple(b.shape)} must be the same [B, H, W], at least "
                         f"{window} px a side")
    x, y = a.double()[:, None], b.double()[:, None]  # [B, 1, H, W]

    def mean(t: Tensor) -> Tensor:  # [B, 1, H, W] -> [B, 1, H - w + 1, W - w + 1], the window means
        return torch.nn.functional.avg_pool2d(t, window, stride=1)

    n = window * window
    cov = n / (n - 1)
    mx, my = mean(x), mean(y)
    vx, vy, vxy = cov * (mean(x * x) - mx * mx), cov * (mean(y * y) - my * my), cov * (mean(x * y) - mx * my)
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * vxy + c2)) / ((mx * mx + my * my + c1) * (vx + vy + c2))
    return s.flatten(1).mean(dim=1)


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation of two maps' values (flattened; average ranks for ties; NaN if one is constant)."""
    from scipy.stats import spearmanr

    a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def scaled_abs(maps: Tensor) -> Tensor:
    """|maps| [B, H, W] divided by each map's maximum (an all-zero map stays zero): values in [0, 1]."""
    absolute = maps.abs().double()
    top = absolute.flatten(1).max(dim=1).values.clamp(min=torch.finfo(torch.float64).tiny)  # [B]
    return absolute / top[:, None, None]


# ---------------------------------------------------------------------------------------------
# The cascade


def cascade(net: nn.Module) -> list[str]:
    """The network's top-level children that hold parameters, from the output down (e.g. fc, layer4, ..., conv1)."""
    names = [name for name, child in net.named_children() if any(True for _ in child.parameters())]
    if not names:
        raise HerlevError(f"{type(net).__name__} has no child module with parameters to randomise")
    return names[::-1]


def randomised(model: nn.Module, names: Sequence[str], seed: int = RANDOMISATION_SEED) -> nn.Module:
    """A copy of a SeverityModel with the `net` children `names` re-initialised (each module's `reset_parameters`)."""
    model = copy.deepcopy(model)
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        for name in names:
            for module in model.net.get_submodule(name).modules():
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.reset_running_stats()
    finally:
        torch.random.set_rng_state(generator_state)
    return model.eval()


@dataclass
class SanityResult:
    """What `sanity` wrote and found."""

    table: pd.DataFrame  # one row per (method, step, cell)
    summary: pd.DataFrame  # per (method, step): means of spearman, ssim, enrichment; seconds per cell
    files: list[Path]


def sanity(run, methods: Sequence[str], out: str | Path | None = None, settings: IGSettings = IGSettings(),
           data: str | Path | None = None, limit: int = 16, split: str = "valid",
           log: Callable[[str], None] | None = None) -> SanityResult:
    """The cascading randomisation test of each method on `limit` held-out cells of a fold run.

    Writes OUT/sanity.csv (one row per method, step and cell), OUT/sanity.md (the means per
    method and step) and OUT/sanity.png (one cell's maps along the cascade, one row per method);
    OUT defaults to RUN/sanity.

    Raises:
        HerlevError: bad run or settings, no held-out cell with a mask.
    """
    from herlev_fa.explanation.attribution import explainer_for, target_column
    from herlev_fa.explanation.masks import NUCLEUS
    from herlev_fa.explanation.overlap import region_shares_batch
    from herlev_fa.config import resolve_device

    run, items, images, regions, keep = masked_cells(run, data, split, limit)  # [N, S, S, 3], [N, S, S], [N, S, S]
    out_dir = Path(out) if out is not None else run.path / "sanity"
    device = resolve_device(settings.device)
    regions_t, keep_t = torch.from_numpy(regions).to(device), torch.from_numpy(keep).to(device)
    steps = ["trained", *cascade(run.model.net)]
    column = target_column(settings.target, run.head, run.task.classes)
    rows, examples = [], {}
    for method in methods:
        reference: Tensor | None = None  # the trained model's maps [N, S, S]
        explained: Tensor | None = None  # the trained model's explained columns [N]: every step explains these
        for k, step in enumerate(steps):
            model = run.model if k == 0 else randomised(run.model, steps[1:k + 1])
            explainer = explainer_for(run, settings, model=model, method=method)
            started = time.perf_counter()
            maps, targets = [], []
            for i in range(0, len(items), settings.bs):
                chunk = column if explained is None else explained[i:i + settings.bs]
                batch = explainer.attribute(images[i:i + settings.bs], chunk)
                maps.append(batch.attribution.float())
                targets.append(batch.target)
            seconds = (time.perf_counter() - started) / len(items)
            maps_t = torch.cat(maps)  # [N, S, S]
            if reference is None:
                reference, explained = maps_t, torch.cat(targets)
            enrichment = region_shares_batch(maps_t, regions_t, keep_t, top=False)["nucleus_enrichment"].cpu()
            ssim = ssim_batch(scaled_abs(maps_t), scaled_abs(reference)).cpu()
            examples[(method, step)] = maps_t[0].cpu().numpy()
            for i, item in enumerate(items.itertuples(index=False)):
                kept = keep[i]
                rows.append({"method": method, "step": k, "randomised": step if k else "", "cell": Path(item.path).stem,
                             "label": item.label,
                             "spearman": spearman(np.abs(maps_t[i].cpu().numpy())[kept],
                                                  np.abs(reference[i].cpu().numpy())[kept]),
                             "ssim": float(ssim[i]), "nucleus_enrichment": float(enrichment[i]),
                             "seconds_per_cell": seconds})
            if log is not None:
                log(f"{method}: {'trained' if k == 0 else 'randomised down to ' + step}, {seconds:.3f} s per cell")
    table = pd.DataFrame(rows)
    summary = summarize_sanity(table)
    files = [out_dir / "sanity.csv", out_dir / "sanity.md", out_dir / "sanity.png"]
    with atomic_path(files[0]) as tmp:
        table.to_csv(tmp, index=False)
    write_text(files[1], sanity_markdown(summary, f"run {run.path.name}, {len(items)} held-out cells, "
                                                  f"{settings.describe('fp32')} (method per row)"))
    from herlev_fa.figures import sanity_png

    sanity_png(files[2], images[0], regions[0] == NUCLEUS, examples, list(methods), steps,
               title=f"Cascading randomisation, {run.path.name}: cell {Path(items['path'].iloc[0]).stem}")
    return SanityResult(table, summary, files)


def masked_cells(run, data: str | Path | None, split: str, limit: int):
    """The run (loaded when given as a folder) and `limit` of its masked cells (`cells_of`), decoded for its network:
    (run, items, images [N, S, S, 3] uint8, mask regions [N, S, S], content [N, S, S] bool), as `sanity` and
    `faithfulness` explain them."""
    from herlev_fa.explanation.report import masked_batch, quantify_items
    from herlev_fa.runs import load_run

    run = load_run(run)
    items = cells_of(quantify_items(run, data, split)[0], limit)
    return (run, items, *masked_batch(items, run.size))


def cells_of(items: pd.DataFrame, limit: int) -> pd.DataFrame:
    """`limit` items spread evenly over the path-sorted table (all when limit is 0 or more than there are)."""
    if limit < 0:
        raise SettingError("{limit} {value} must be >= 0 (0: every held-out cell)", limit)
    items = items.sort_values("path").reset_index(drop=True)
    if not limit or limit >= len(items):
        return items
    return items.iloc[np.linspace(0, len(items) - 1, limit).round().astype(int)].reset_index(drop=True)


def summarize_sanity(table: pd.DataFrame) -> pd.DataFrame:
    """Per method and cascade step: cells, mean Spearman, mean SSIM, mean and median enrichment, seconds per cell."""
    grouped = table.groupby(["method", "step", "randomised"], sort=False)
    return grouped.agg(cells=("cell", "size"), spearman=("spearman", "mean"), ssim=("ssim", "mean"),
                       enrichment=("nucleus_enrichment", "mean"),
                       enrichment_median=("nucleus_enrichment", "median"),
                       seconds_per_cell=("seconds_per_cell", "first")).reset_index()


def sanity_markdown(summary: pd.DataFrame, title: str) -> str:
    """The summary as markdown: one table per method, rows = the cascade steps."""
    lines = [f"# Cascading randomisation: {title}", "",
             "Each step re-initialises the named stage and every stage above it. Spearman and SSIM: |map| against the "
             "trained model's |map| on the same cell (1 = unchanged); a method that passes falls towards 0.", ""]
    for method, part in summary.groupby("method", sort=False):
        lines += [f"## {method}", "", "| randomised down to | cells | Spearman | SSIM | enrichment mean | median |",
                  "|---|---:|---:|---:|---:|---:|"]
        for r in part.itertuples(index=False):
            lines.append(f"| {r.randomised or '(trained)'} | {r.cells} | {r.spearman:.3f} | {r.ssim:.3f} | "
                         f"{r.enrichment:.2f} | {r.enrichment_median:.2f} |")
        lines.append("")
    return "\n".join(lines)

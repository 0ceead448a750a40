"""Integrated Gradients for a run's model, on exactly the preprocessing it saw at validation.

What this is: a thin layer over captum's `IntegratedGradients` (Sundararajan, Taly & Yan,
"Axiomatic Attribution for Deep Networks", ICML 2017) that

* rebuilds the validation input: `letterbox(size)` (keep aspect, edge-replicate pad to a
  square), then `(pixel / 255 - mean) / std` with the run's own normalisation, as fastai's
  `IntToFloatTensor` + `Normalize` do in the DataLoaders;
* chooses the scalar to explain (`target_column`): the *logit* of a class for `cls` / `cls_reg`,
  the severity score for `reg` (or, on request, for any head);
* builds the baseline (`BASELINES`), calls captum with its quadrature rule (`RULES`: Gauss-
  Legendre by default, the midpoint rule on request), internal batching and
  `return_convergence_delta=True`, and sums the attribution over colour channels;
* maps the [S, S] map of the model's letterboxed grid back to the input image's own pixel
  grid (`letterbox_box`, `unletterbox`: pure functions, tested exhaustively).

Why the logit and not the probability: a softmax probability of class c also moves when the
*other* classes' evidence moves, and it saturates near 0 and 1, so its IG path integral is
spent in a short stretch of the path and its attributions mix "evidence for c" with
"evidence against the rest". The logit is the last quantity the network computes for c alone;
its IG answers "which pixels raise the score of c". For `reg` the single output, the severity
score, is the natural target. `score` explains the expected severity for `cls` / `cls_reg` too.
`corn` has no logit per class (its outputs are the K - 1 conditional logits): its class column
is log p_c, which its softmax gives back as for the other class heads.

Convergence: captum's delta is `sum(attributions) - (f(x) - f(baseline))` (completeness).
`relative_delta` divides |delta| by |f(x) - f(baseline)| (at least `GAP_FLOOR`); above `tol`
the result is flagged and a warning suggests more steps.

The other attribution methods (`--method`: SmoothGrad, GradientShap, Saliency, Grad-CAM,
Occlusion) run through the same `Explainer` (same input, target and batching) by way of
``explain.methods``; they have no completeness delta (NaN).

What it is not: overlap with mask regions (``explain.overlap``), figures and files
(``explain.report``).
"""

from __future__ import annotations

import contextlib
import math
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np
import torch
from torch import Tensor, nn

from herlev_fa.config import IG_BASELINES as BASELINES
from herlev_fa.config import IGSettings
from herlev_fa.data.images import normalise
from herlev_fa.errors import HerlevError, SettingError, missing as missing_message
from herlev_fa.explanation.methods import METHODS as OTHER_METHODS
from herlev_fa.model.heads import Head
from herlev_fa.model.inference import fold_batchnorm

DEFAULT_RULE = IGSettings.rule  # captum's default; best for smooth networks
AUTO_TRIES_BF16 = {"cuda"}  # device types where precision 'auto' tries bf16 (CPUs: twice the delta where measured)
DEFAULT_BASELINE = IGSettings.baseline
DEFAULT_TOL = IGSettings.tol  # relative completeness error above which a result is flagged
GAP_FLOOR = 0.1  # |f(x) - f(baseline)| below this (logit units) is measured against this instead
BLUR_SIGMA = 0.125  # blur baseline: Gaussian sigma as a fraction of the model's input size


# ---------------------------------------------------------------------------------------------
# Geometry: the letterbox and its inverse (pure)


@dataclass(frozen=True)
class Box:
    """Where an image's content sits in the letterboxed square: rows top..top+height, cols left..left+width."""

    top: int
    left: int
    height: int
    width: int

    def slices(self) -> tuple[slice, slice]:
        return slice(self.top, self.top + self.height), slice(self.left, self.left + self.width)


def letterbox_box(height: int, width: int, size: int) -> Box:
    """The content box of an `height` x `width` image after `data.images.letterbox(size)`.

    Mirrors albumentations 2.0: `LongestMaxSize` scales by `size / max(h, w)` and rounds each
    side (Python's `round`, at least 1); `PadIfNeeded` (centre) pads `int(missing / 2)` before
    and the rest after.
    """
    scale = size / max(height, width)
    new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    top = int((size - new_h) / 2.0) if new_h < size else 0
    left = int((size - new_w) / 2.0) if new_w < size else 0
    return Box(top, left, new_h, new_w)


def content_mask(box: Box, size: int) -> np.ndarray:
    """[size, size] bool: True on the image's own pixels, False on the letterbox padding."""
    keep = np.zeros((size, size), bool)
    keep[box.slices()] = True
    return keep


def unletterbox(grid: np.ndarray, height: int, width: int) -> np.ndarray:
    """An attribution map of the letterboxed grid back to the input image's own pixel grid.

    The padding is cropped off and the content resized to `height` x `width` (area averaging
    when shrinking, bilinear when enlarging), then scaled by (content pixels) / (H * W) so that
    the map keeps its attribution mass: its sum equals the sum over the content box (exactly
    for integer scale factors, to interpolation error otherwise). Padding attribution is dropped.

    Args:
        grid: [S, S] float attribution in the model's grid.

    Returns:
        [height, width] float32.
    """
    size = grid.shape[0]
    if grid.ndim != 2 or grid.shape[1] != size:
        raise ValueError(f"expected a square [S, S] map, got shape {grid.shape}")
    box = letterbox_box(height, width, size)
    crop = np.ascontiguousarray(grid[box.slices()], dtype=np.float32)  # [h', w']
    if crop.shape == (height, width):
        return crop
    shrink = height * width <= crop.size
    out = cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)  # [H, W]
    return (out * (crop.size / (height * width))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Inputs: baselines (tensor functions; the normalisation is `data.images.normalise`)


def make_baseline(x: Tensor, kind: str, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """The IG baseline for normalised inputs x [B, 3, S, S], same shape.

    * `mean`: all zeros, i.e. the normalisation mean colour (for pretrained timm models the
      ImageNet mean grey-brown; 0.5 grey for models without pretrained statistics);
    * `black` / `white`: a constant 0 / 255 image, normalised ((0 - mean) / std, (1 - mean) / std);
    * `blur`: the image itself under a heavy Gaussian blur (sigma = `BLUR_SIGMA` x S, edges
      replicated): the colours stay, shapes and texture go.
    """
    if kind not in BASELINES:
        raise HerlevError(f"unknown baseline '{kind}': choose one of {', '.join(BASELINES)}")
    if kind == "mean":
        return torch.zeros_like(x)
    m = torch.tensor(list(mean), dtype=x.dtype, device=x.device)[None, :, None, None]  # [1, 3, 1, 1]
    s = torch.tensor(list(std), dtype=x.dtype, device=x.device)[None, :, None, None]
    if kind in ("black", "white"):
        value = 0.0 if kind == "black" else 1.0
        return ((value - m) / s).expand_as(x).contiguous()
    return gaussian_blur(x, BLUR_SIGMA * x.shape[-1])


def gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of x [B, C, H, W] with edge replication; keeps constants constant."""
    radius = max(1, int(math.ceil(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32, device=x.device)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    k = (k / k.sum()).to(x.dtype)  # [2r + 1]
    c = x.shape[1]
    out = torch.nn.functional.pad(x, (radius, radius, 0, 0), mode="replicate")  # [B, C, H, W + 2r]
    out = torch.nn.functional.conv2d(out, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)  # [B, C, H, W]
    out = torch.nn.functional.pad(out, (0, 0, radius, radius), mode="replicate")  # [B, C, H + 2r, W]
    return torch.nn.functional.conv2d(out, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)  # [B, C, H, W]


# ---------------------------------------------------------------------------------------------
# The explained scalar


class ExplainedOutputs(nn.Module):
    """A SeverityModel seen as the scalars IG can explain.

    Input [B, 3, S, S]; output [B, K + 1] (class logits, then the severity score) for class heads
    (`corn`: the class log-probabilities), [B, 1] (the severity score) for `reg` (`Head.explained`). Column
    `head.score_index(K)` is the score.
    """

    def __init__(self, model: nn.Module, head: Head, severities: Sequence[float]):
        super().__init__()
        self.model = model
        self.head = head
        self.register_buffer("severities", torch.tensor(list(severities), dtype=torch.float32), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.head.explained(self.model(x), self.severities)


def target_column(target: str, head: Head, classes: Sequence[str]) -> int | None:
    """The output column of `ExplainedOutputs` to explain; None = each image's predicted class.

    `target` is `predicted`, `score`, or a class name (not for `reg`, which has no class outputs).

    Raises:
        HerlevError: an unknown class, or a class asked of a `reg` run.
    """
    if target == "score" or (target == "predicted" and not head.has_classes):
        return head.score_index(len(classes))
    if target == "predicted":
        return None
    if target not in classes:
        raise SettingError(f"unknown {{target}} {{value}}: use predicted, score, or one of {', '.join(classes)}",
                           target)
    if not head.has_classes:
        raise SettingError(f"{{target}} {target}: a {head.name} run has no class outputs; it explains the severity "
                           "score ({target} predicted or score)")
    return list(classes).index(target)


@dataclass
class BatchAttribution:
    """IG of one batch in the model's grid (all numpy, B images, K classes)."""

    attribution: np.ndarray  # [B, S, S] float32, summed over colour channels
    delta: np.ndarray  # [B] captum's convergence delta: sum(attribution) - (f(x) - f(baseline))
    gap: np.ndarray  # [B] f(x) - f(baseline) of the explained scalar
    target: np.ndarray  # [B] int, explained column of ExplainedOutputs
    probs: np.ndarray | None  # [B, K] softmax of the class logits; None for reg
    score: np.ndarray  # [B] severity score
    predicted: np.ndarray  # [B] int, predicted class (nearest severity for reg)
    change: np.ndarray  # [B, S, S] float32, sum over channels of |x - baseline|: what IG multiplies the gradients by
    precision: str = "fp32"  # what the gradients were computed in ('fp32' or 'bf16')

    @property
    def relative_delta(self) -> np.ndarray:
        """[B] |delta| / max(|f(x) - f(baseline)|, GAP_FLOOR)."""
        return np.abs(self.delta) / np.maximum(np.abs(self.gap), GAP_FLOOR)


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[None]:
    """Parameters without gradients during attribution (IG needs input gradients only), restored on exit."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class Explainer:
    """Holds a model on its device with the run's preprocessing and IG settings; call it on batches.

    Args:
        model: a SeverityModel (input [B, 3, S, S], output as in `model.heads`).
        head, classes, severities, mean, std, size: as stored in the run.
        steps: quadrature nodes of the path integral (forward + backward passes per image).
        baseline: one of `BASELINES`.
        device: 'cpu' or 'cuda[:n]' (already resolved).
        internal_batch_size: images x steps per forward/backward pass; None = sized automatically
            (a memory budget on the CPU, a measured memory probe on CUDA).
        precision: 'fp32', 'bf16' autocast (the delta still checked against the fp32 model), or
            'auto': on a device type in `AUTO_TRIES_BF16` (CUDA), the first batch is attributed
            both ways and the precision with the smaller mean |delta| (bf16 on a tie) is kept for
            every batch (`used`, `auto_deltas`); elsewhere fp32. bf16 was 1.33x faster than fp32 on
            an H200 at a smaller delta, but doubled the delta on a CPU (docs/explainability.md).
        rule: the quadrature rule, a key of `RULES`. Gauss-Legendre (default) converges fastest
            on smooth networks; on ReLU networks (ResNets) the midpoint rule gave a smaller
            delta at the same steps (9-26%, docs/explainability.md).
        fold_bn: attribute through a copy with BatchNorm folded into the convolutions
            (`fold_batchnorm`: same IG, faster); False keeps the model as it is.
        method: the attribution method, a key of `config.ATTRIBUTION_METHODS`: `ig` (this module's
            batched path with its completeness delta), or one of ``explain.methods`` (no delta: NaN).
        samples, noise, window: the settings of smoothgrad / gradientshap (noisy samples, noise sd as
            a fraction of the value range) and occlusion (square side; None = S / 8).
    """

    def __init__(self, model: nn.Module, head: Head, classes: Sequence[str], severities: Sequence[float],
                 mean: Sequence[float], std: Sequence[float], size: int, steps: int = 50,
                 baseline: str = DEFAULT_BASELINE, device: str = "cpu", internal_batch_size: int | None = None,
                 precision: str = "auto", tol: float = DEFAULT_TOL, rule: str = DEFAULT_RULE,
                 fold_bn: bool = True, method: str = "ig", samples: int = 8, noise: float = 0.15,
                 window: int | None = None):
        IGSettings(method=method, steps=steps, rule=rule, baseline=baseline, samples=samples, noise=noise,
                   window=window, precision=precision, tol=tol)  # the settings' rules and messages, stated there once
        self.head, self.classes, self.severities = head, tuple(classes), tuple(severities)
        self.mean, self.std, self.size = tuple(mean), tuple(std), int(size)
        self.steps, self.baseline, self.precision, self.tol = int(steps), baseline, precision, float(tol)
        # the precision every batch is attributed in; None: auto, decided by the first batch's deltas
        tries_bf16 = precision == "auto" and torch.device(device).type in AUTO_TRIES_BF16 and method == "ig"
        self.used: str | None = None if tries_bf16 else ("fp32" if precision == "auto" else precision)
        self.auto_deltas: dict[str, float] | None = None  # auto: mean |delta| of the first batch, per precision
        self.rule, self.method = rule, method
        self.samples, self.noise, self.window = int(samples), float(noise), window
        self.device = torch.device(device)
        self.internal_batch_size = internal_batch_size
        self.channels_last = self.device.type == "cuda"  # faster convolutions on GPUs; slower on this CPU path
        model = model.to(self.device).eval()
        if fold_bn and not (method in OTHER_METHODS and OTHER_METHODS[method].needs_layer):
            model = fold_batchnorm(model, self.size)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.outputs = ExplainedOutputs(model, head, severities).to(self.device).eval()
        self._per_pass: int | None = None  # inputs per forward/backward pass, sized on first use
        self.attribution_seconds = 0.0  # wall time spent inside `attribute` (for bench/ig.py)
        self.attributed = 0  # images attributed

    def _autocast(self, precision: str | None = None):
        if (precision or self.used) == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()  # fp32, and auto before its choice (the larger memory probe)

    def _to_device(self, x: Tensor) -> Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def _chunk(self, n_images: int) -> int:
        """Images x steps per pass for a batch of `n_images` (at least n_images, at most n_images x steps)."""
        if self.internal_batch_size is not None:
            return max(n_images, self.internal_batch_size)
        if self._per_pass is None:
            # CPU: about 2^19 input pixels per pass (128 images at 64 px) measured fastest on 2 cores
            self._per_pass = self._cuda_budget() if self.device.type == "cuda" else max(1, 2 ** 19 // self.size ** 2)
        return int(min(max(n_images, self._per_pass), n_images * self.steps))

    def _cuda_budget(self) -> int:
        """Inputs per forward/backward that fit in half the free GPU memory, from one measured probe."""
        probe = 4
        x = torch.zeros(probe, 3, self.size, self.size, device=self.device, requires_grad=True)
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        with self._autocast(), _frozen(self.outputs):
            out = self.outputs(self._to_device(x))[:, 0].sum()
            torch.autograd.grad(out, x)
        per_input = max(1, (torch.cuda.max_memory_allocated(self.device) - before) // probe)
        free, _ = torch.cuda.mem_get_info(self.device)
        return max(probe, int(0.5 * free / per_input))

    def attribute(self, images: np.ndarray | Tensor, target: int | Tensor | None = None) -> DeviceAttribution:
        """IG of letterboxed uint8 images [B, S, S, 3] for output column `target` (None: predicted class; a [B]
        tensor: one column per image).

        Everything stays on the explainer's device; the wall time of the call is added to
        `attribution_seconds` (the GPU is synchronised at the end so that the time is the GPU's).
        """
        if images.ndim != 4 or tuple(images.shape[1:]) != (self.size, self.size, 3):
            raise ValueError(f"expected letterboxed images [B, {self.size}, {self.size}, 3], got {tuple(images.shape)}")
        started = time.perf_counter()
        u8 = images if isinstance(images, Tensor) else torch.from_numpy(np.ascontiguousarray(images))
        x = self._to_device(normalise(u8.to(self.device, non_blocking=True), self.mean, self.std))  # [B, 3, S, S]
        base = self._to_device(make_baseline(x, self.baseline, self.mean, self.std))  # [B, 3, S, S]
        n = x.shape[0]
        with torch.no_grad():  # fp32 even with bf16: the predictions, and the gap completeness is checked against
            out = self.outputs(x).float()  # [B, K + 1] or [B, 1]
            out_base = self.outputs(base).float()
        probs, score, predicted = self.outputs.head.decode_explained(out, self.severities)  # [B, K] | None, [B], [B]
        if isinstance(target, Tensor):  # a column per image
            t = target.to(out.device, torch.long)  # [B]
        else:
            t = predicted if target is None else torch.full((n,), target, dtype=torch.long, device=out.device)  # [B]
        gap = (out - out_base).gather(1, t[:, None])[:, 0]  # [B]
        if self.method != "ig":
            with self._autocast(), _frozen(self.outputs):
                attr = OTHER_METHODS[self.method].attribute(
                    self.outputs, x, base, t, steps=self.steps, rule=self.rule, samples=self.samples, noise=self.noise,
                    window=self.window, chunk=self._chunk(n) if self.method != "saliency" else n).float()  # [B, S, S]
            attr, delta = attr[:, None], torch.full((n,), torch.nan, device=x.device)  # no completeness: no delta
        elif self.used is None:  # auto: this first batch both ways; the smaller mean |delta| is kept from now on
            tried = {p: self._integrate(x, base, t, p) for p in ("fp32", "bf16")}
            self.auto_deltas = {p: float(delta.abs().mean()) for p, (_, delta) in tried.items()}
            self.used = "bf16" if self.auto_deltas["bf16"] <= self.auto_deltas["fp32"] else "fp32"
            attr, delta = tried[self.used]
        else:
            attr, delta = self._integrate(x, base, t, self.used)
        result = DeviceAttribution(
            attribution=attr.detach().float().sum(dim=1),  # [B, 3, S, S] -> [B, S, S]
            delta=delta.detach().float(), gap=gap, target=t, probs=probs, score=score, predicted=predicted,
            change=(x - base).abs().float().sum(dim=1), precision=self.used,  # [B, S, S]
        )
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        self.attribution_seconds += time.perf_counter() - started
        self.attributed += n
        return result

    def _integrate(self, x: Tensor, base: Tensor, t: Tensor, precision: str) -> tuple[Tensor, Tensor]:
        """captum's IG of inputs x [B, 3, S, S] from `base` for columns t [B] in `precision`: (attribution, delta)."""
        from captum.attr import IntegratedGradients

        ig = IntegratedGradients(self.outputs)
        fp32 = precision == "fp32"
        with self._autocast(precision), _frozen(self.outputs):
            attr = ig.attribute(x, baselines=base, target=t, n_steps=self.steps, method=self.rule,
                                internal_batch_size=self._chunk(x.shape[0]), return_convergence_delta=fp32)
        if fp32:
            return attr
        # the endpoints in fp32: completeness of bf16 gradients against the model itself
        return attr, ig.compute_convergence_delta(attr.float(), base, x, target=t)

    def __call__(self, images: np.ndarray | Tensor, target: int | None = None) -> BatchAttribution:
        """`attribute`, copied to the host as numpy in one copy per field."""
        return self.attribute(images, target).numpy()


@dataclass
class DeviceAttribution:
    """IG of one batch, as tensors on the explainer's device (B images, K classes); `numpy()` copies it to the host."""

    attribution: Tensor  # [B, S, S] float32, summed over colour channels
    delta: Tensor  # [B] captum's convergence delta
    gap: Tensor  # [B] f(x) - f(baseline) of the explained scalar
    target: Tensor  # [B] long, explained column of ExplainedOutputs
    probs: Tensor | None  # [B, K] softmax of the class logits; None without class outputs
    score: Tensor  # [B] severity score
    predicted: Tensor  # [B] long
    change: Tensor  # [B, S, S] float32, sum over channels of |x - baseline|
    precision: str  # 'fp32' or 'bf16': what the gradients were computed in

    def numpy(self) -> BatchAttribution:
        def host(t: Tensor | None) -> np.ndarray | None:
            return None if t is None else t.detach().cpu().numpy()

        return BatchAttribution(attribution=host(self.attribution), delta=host(self.delta), gap=host(self.gap),
                                target=host(self.target), probs=host(self.probs), score=host(self.score),
                                predicted=host(self.predicted), change=host(self.change), precision=self.precision)


def explainer_for(run, settings: IGSettings = IGSettings(), model: nn.Module | None = None,
                  method: str | None = None) -> Explainer:
    """An `Explainer` with a loaded run's model and preprocessing, computing attributions as `settings` say.

    `model` replaces the run's (a randomised copy, say) and `method` the settings' method.
    """
    from herlev_fa.config import resolve_device

    return Explainer(run.model if model is None else model, run.head, run.task.classes, run.task.severities,
                     run.mean, run.std, run.size, steps=settings.steps, baseline=settings.baseline,
                     device=resolve_device(settings.device), internal_batch_size=settings.internal_batch_size,
                     precision=settings.precision, tol=settings.tol, rule=settings.rule,
                     method=settings.method if method is None else method, samples=settings.samples,
                     noise=settings.noise, window=settings.window)


T = TypeVar("T")
U = TypeVar("U")


def prefetched(load: Callable[[T], U], chunks: Iterable[T]) -> Iterator[tuple[T, U]]:
    """`(chunk, load(chunk))` in order, loading the next chunk in a thread while the caller works on this one.

    Decoding (PIL, OpenCV) releases the GIL, so the files of batch i + 1 are read while batch i is
    attributed. An exception of `load` is raised in the caller, at its chunk.
    """
    from concurrent.futures import ThreadPoolExecutor

    chunks = iter(chunks)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="herlev-decode") as pool:
        current = next(chunks, None)
        pending = None if current is None else pool.submit(load, current)
        while pending is not None:
            loaded = pending.result()
            following = next(chunks, None)
            pending = None if following is None else pool.submit(load, following)
            yield current, loaded
            current = following


# ---------------------------------------------------------------------------------------------
# Per-image results and the public entry point


@dataclass
class Explanation:
    """IG of one image. Maps are numpy; `attribution` is in the input image's own pixel grid."""

    name: str  # output file stem
    path: Path  # the input image
    image: np.ndarray  # [H, W, 3] uint8, the decoded input
    attribution: np.ndarray  # [H, W] float32, IG summed over channels, mapped back to the input grid
    grid_attribution: np.ndarray  # [S, S] float32, IG in the model's letterboxed grid
    box: Box  # the image's content in the letterboxed grid
    target: str  # explained scalar: a class name (its logit) or 'score'
    predicted: str  # predicted class
    probs: dict[str, float] | None  # class probabilities (None for reg)
    score: float  # severity score
    delta: float  # completeness error: sum(grid_attribution) - (f(x) - f(baseline)); NaN for methods other than IG
    gap: float  # f(x) - f(baseline) of the explained scalar
    relative_delta: float  # |delta| / max(|gap|, GAP_FLOOR)
    converged: bool  # relative_delta <= tol
    precision: str = "fp32"  # what the gradients were computed in ('fp32' or 'bf16')
    method: str = "ig"  # the attribution method (`config.ATTRIBUTION_METHODS`)


def output_names(paths: Sequence[Path]) -> list[str]:
    """File stems for outputs: the image stem, prefixed by its folder (then numbered) where stems repeat."""
    stems = [p.stem for p in paths]
    names = [s if stems.count(s) == 1 else f"{p.parent.name}_{s}" for p, s in zip(paths, stems)]
    seen: dict[str, int] = {}
    out = []
    for name in names:
        seen[name] = seen.get(name, 0) + 1
        out.append(name if names.count(name) == 1 else f"{name}_{seen[name]}")
    return out


def results_of(batch: BatchAttribution, explainer: Explainer, paths: Sequence[Path], names: Sequence[str],
               images: Sequence[np.ndarray]) -> list[Explanation]:
    """Split a batch into per-image `Explanation`s, mapping each map back to its input grid."""
    classes = explainer.classes
    score_index = explainer.head.score_index(len(classes))
    out = []
    for i, (path, name, image) in enumerate(zip(paths, names, images)):
        h, w = image.shape[:2]
        grid = batch.attribution[i]  # [S, S]
        t = int(batch.target[i])
        rel = float(batch.relative_delta[i])
        out.append(Explanation(
            name=name, path=Path(path), image=image, attribution=unletterbox(grid, h, w), grid_attribution=grid,
            box=letterbox_box(h, w, explainer.size), target="score" if t == score_index else classes[t],
            predicted=classes[int(batch.predicted[i])],
            probs=None if batch.probs is None else {c: float(p) for c, p in zip(classes, batch.probs[i])},
            score=float(batch.score[i]), delta=float(batch.delta[i]), gap=float(batch.gap[i]),
            relative_delta=rel, converged=not rel > explainer.tol, precision=batch.precision, method=explainer.method,
        ))
    return out


def warn_unconverged(names: Sequence[str], relative_deltas: Sequence[float], steps: int, tol: float) -> int:
    """Warn once, naming the worst image, when any relative delta is above `tol`; returns how many are."""
    rel = np.asarray(relative_deltas, dtype=np.float64)
    bad = int((rel > tol).sum())
    if bad:
        worst = int(np.argmax(rel))
        warnings.warn(
            f"IG convergence delta above {tol:.0%} of f(x) - f(baseline) for {bad} of {len(rel)} image(s) "
            f"(worst: {names[worst]}, {rel[worst]:.1%}); rerun with more steps, e.g. --steps {2 * steps}",
            UserWarning, stacklevel=3,
        )
    return bad


def iter_explanations(run, paths: Sequence[str | Path], settings: IGSettings = IGSettings(),
                      explainer: Explainer | None = None) -> Iterator[Explanation]:
    """Explain images `settings.bs` at a time, yielding one `Explanation` per image in order (streaming).

    The next batch is decoded and letterboxed while the current one is attributed (`prefetched`).
    `explainer` replaces the one built from the run and `settings` (e.g. to read its timing).

    Raises:
        HerlevError: bad run, target, baseline or steps; a missing or unreadable image.
    """
    from herlev_fa.data.images import letterbox
    from herlev_fa.data.images import load_image
    from herlev_fa.runs import load_run

    run = load_run(run)
    paths = [Path(p) for p in paths]
    if not paths:
        raise HerlevError("no image given to explain")
    missing = [p for p in paths if not p.is_file()]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        if missing[0].is_dir():
            raise HerlevError(f"'{missing[0]}' is a folder, not an image file{more}; explain takes image files")
        raise HerlevError(f"{missing_message(missing[0], 'image')}{more}")
    column = target_column(settings.target, run.head, run.task.classes)
    explainer = explainer or explainer_for(run, settings)
    names = output_names(paths)
    resize = letterbox(run.size)

    def load(start: int) -> tuple[list[np.ndarray], np.ndarray]:
        images = [load_image(p) for p in paths[start:start + settings.bs]]  # [H, W, 3] uint8 each
        return images, np.stack([resize(image=im)["image"] for im in images])  # [B, S, S, 3]

    for start, (images, boxed) in prefetched(load, range(0, len(paths), settings.bs)):
        stop = start + len(images)
        yield from results_of(explainer(boxed, column), explainer, paths[start:stop], names[start:stop], images)


def explain(run, paths: Sequence[str | Path], settings: IGSettings = IGSettings()) -> list[Explanation]:
    """Integrated Gradients of a run's model for each image, batched `settings.bs` images at a time.

    Args:
        run: a loaded `Run` or a run folder.
        paths: image files (bmp/jpg/png/tif; RGB, RGBA or grayscale).
        settings: what to explain and how (`IGSettings`: target, steps, quadrature rule, baseline,
            precision, tolerance of the delta, batch sizes, device).

    Returns:
        One `Explanation` per image, in order; `attribution` is [H, W] in the image's own grid.

    Raises:
        HerlevError: bad run, target, baseline or steps; a missing or unreadable image.
    """
    results = list(iter_explanations(run, paths, settings))
    warn_unconverged([r.name for r in results], [r.relative_delta for r in results], settings.steps, settings.tol)
    return results

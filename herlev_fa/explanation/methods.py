"""The attribution methods besides Integrated Gradients, each a thin class over captum.

What this is: one small class per method (`METHODS`, keyed by the `--method` names of
``config.ATTRIBUTION_METHODS``) that turns normalised inputs x [B, 3, S, S], the reference
input (the `--baseline` image) and the explained output columns t [B] into one map per image,
[B, S, S] in the model's letterboxed grid, as captum computes it:

* `saliency`: |df/dx| (Simonyan et al. 2014), captum's `Saliency(abs=True)`, summed over colour
  channels: how sensitive f is to each pixel, not signed.
* `smoothgrad`: Integrated Gradients averaged over `samples` noisy copies of the image (captum's
  `NoiseTunnel`, Smilkov et al. 2017), noise sd = `noise` x the batch's value range. Costs
  `samples` x IG. Signed.
* `gradientshap`: captum's `GradientShap` (Lundberg & Lee 2017): gradients at random points
  between the reference and noisy copies of the image, times (x - reference), `samples` per
  image. Signed; one forward/backward per sample.
* `gradcam`: captum's `LayerGradCam` (Selvaraju et al. 2017) on the network's last
  convolutional stage (timm's last `feature_info` module, e.g. `layer4` of a ResNet), ReLU'd as
  in the paper and upsampled bilinearly to the input: non-negative, as coarse as that stage's
  grid (S / 32 for a ResNet).
* `occlusion`: captum's `Occlusion` (Zeiler & Fergus 2014): a square of side `window` (default
  S / 8) replaced by the reference, moved by half its side; a pixel's value is the mean drop of
  f over the squares that cover it. Signed (f - f(occluded)).

None of these has IG's completeness property, so their `delta` is NaN; `ig` itself stays in
``explain.attribution`` (its fast batched path and its convergence check).

What it is not: preprocessing, targets, batching and the delta (``explain.attribution``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from herlev_fa.errors import HerlevError

NOISE_SEED = 0  # smoothgrad / gradientshap draw their noise from this seed per call: same inputs, same maps


@contextlib.contextmanager
def seeded(seed: int = NOISE_SEED) -> Iterator[None]:
    """Draw captum's noise from `seed`, leaving the caller's RNG states as they were.

    Both global generators: captum draws the noise from torch's, and GradientShap's points on the
    path and its choice of baselines from NumPy's.
    """
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    state = np.random.get_state()
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        np.random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(state)


def last_conv_stage(net: nn.Module) -> tuple[str, nn.Module]:
    """The last convolutional stage of a timm network: the module of its last `feature_info` entry.

    Raises:
        HerlevError: the network declares no feature stages (not a timm CNN).
    """
    info = getattr(net, "feature_info", None)
    names = [f["module"] for f in info] if isinstance(info, list) else (info.module_name() if info is not None else [])
    if not names:
        raise HerlevError(f"--method gradcam needs a convolutional timm network with feature stages; "
                          f"{type(net).__name__} declares none")
    return names[-1], net.get_submodule(names[-1])


@dataclass(frozen=True)
class Method:
    """One attribution method: `attribute(forward, x, reference, t)` -> [B, S, S] maps.

    `forward` maps inputs [B, 3, S, S] to the explained outputs [B, M]; `chunk` is the number of
    inputs per forward/backward pass the caller can afford.
    """

    name: str
    needs_layer: bool = False  # reads a layer of the unfolded model (BatchNorm folding must be off)

    def attribute(self, forward: nn.Module, x: Tensor, reference: Tensor, t: Tensor, *, steps: int, rule: str,
                  samples: int, noise: float, window: int | None, chunk: int) -> Tensor:
        from captum.attr import GradientShap, IntegratedGradients, LayerAttribution, LayerGradCam, NoiseTunnel
        from captum.attr import Occlusion, Saliency

        b, _, s, _ = x.shape
        sd = float(noise * (x.max() - x.min()))  # the SmoothGrad paper's noise level: a fraction of the value range
        if self.name == "saliency":
            attr = Saliency(forward).attribute(x.detach().requires_grad_(), target=t, abs=True)  # [B, 3, S, S]
            return attr.sum(dim=1)  # [B, S, S]
        if self.name == "smoothgrad":
            with seeded():
                attr = NoiseTunnel(IntegratedGradients(forward)).attribute(
                    x, nt_type="smoothgrad", nt_samples=samples, nt_samples_batch_size=1, stdevs=sd,
                    baselines=reference, target=t, n_steps=steps, method=rule,
                    internal_batch_size=max(b, chunk))  # [B, 3, S, S]
            return attr.sum(dim=1)
        if self.name == "gradientshap":
            with seeded():
                attr = GradientShap(forward).attribute(x, baselines=reference, target=t, n_samples=samples, stdevs=sd)
            return attr.sum(dim=1)  # [B, S, S]
        if self.name == "gradcam":
            _, layer = last_conv_stage(forward.model.net)
            cam = LayerGradCam(forward, layer).attribute(x, target=t, relu_attributions=True)  # [B, 1, h, w]
            return LayerAttribution.interpolate(cam, (s, s), interpolate_mode="bilinear")[:, 0]  # [B, S, S]
        if self.name == "occlusion":
            side = min(s, window or max(1, s // 8))
            stride = max(1, side // 2)
            attr = Occlusion(forward).attribute(x, sliding_window_shapes=(3, side, side), strides=(3, stride, stride),
                                                baselines=reference, target=t,
                                                perturbations_per_eval=max(1, chunk // b))  # [B, 3, S, S]
            return attr[:, 0]  # the window spans the 3 channels: each holds the same drop
        raise HerlevError(f"unknown method '{self.name}'")


# every method but ig (which ``explain.attribution`` computes itself)
METHODS: dict[str, Method] = {m.name: m for m in (
    Method("smoothgrad"), Method("gradientshap"), Method("saliency"), Method("gradcam", needs_layer=True),
    Method("occlusion"))}

"""Optimiser step cost: fastai's Adam against torch's multi-tensor (foreach) AdamW behind fastai's OptimWrapper, in one run.

The model's parameter tensors (resnet101: 314) get random gradients; each optimiser's step is
timed (a) on the real tensors and (b) on as many 4-element tensors, where the step does no
arithmetic to speak of and the time is the per-tensor overhead: Python work and, on a GPU,
kernel launches, which a GPU step pays on top of its arithmetic. Prints both and the ratios.

    python bench/optimizer_step.py [--arch resnet101] [--device cpu|cuda]
"""  # noqa: E501 (the first line is the --help description)

from __future__ import annotations

import argparse
import time
from functools import partial

import timm
import torch
from fastai.optimizer import Adam, OptimWrapper


def step_ms(opt, device: str, n: int) -> float:
    opt.step()  # warm-up: state allocation
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(n):
        opt.step()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / n * 1e3


def compare(params: list[torch.Tensor], device: str, n: int) -> tuple[float, float]:
    fastai_adam = Adam([params], lr=1e-3, wd=0.05, decouple_wd=True)
    torch_adamw = OptimWrapper([params], opt=partial(torch.optim.AdamW, foreach=True), lr=1e-3, weight_decay=0.05)
    return step_ms(fastai_adam, device, n), step_ms(torch_adamw, device, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="resnet101")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    torch.manual_seed(0)
    params = list(timm.create_model(args.arch, num_classes=5).to(args.device).parameters())
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    tiny = [torch.nn.Parameter(torch.zeros(4, device=args.device)) for _ in params]
    for p in tiny:
        p.grad = torch.ones_like(p)
    print(f"{args.arch} on {args.device}: {len(params)} parameter tensors, "
          f"{sum(p.numel() for p in params) / 1e6:.1f}M values")
    a, b = compare(params, args.device, 5)
    print(f"real tensors:     fastai Adam {a:8.1f} ms/step, torch AdamW {b:8.1f} ms/step, fastai/torch = {a / b:.2f}")
    a, b = compare(tiny, args.device, 20)
    print(f"4-value tensors:  fastai Adam {a:8.1f} ms/step, torch AdamW {b:8.1f} ms/step, fastai/torch = {a / b:.2f}")


if __name__ == "__main__":
    main()

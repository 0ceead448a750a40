"""Training throughput: herlev's training loop against a plain PyTorch loop, in one process.

(a) plain loop: the same timm model, input size and batch, AdamW, bf16 autocast and
    channels-last on CUDA, on random tensors already on the device (no data pipeline at all);
(b) herlev: the real training loop (decoded-image cache, albumentations augmentation, fastai
    Learner with this tool's loss, metrics and callbacks) on real cells, training batches of one
    epoch after a warm-up epoch.

Prints images/s of both and b/a. Defaults: resnet101 at 224 px, batch 64 on a GPU (the issue's
setting); test_resnet at 64 px on the CPU, where only the ratio means anything.

    python bench/train_throughput.py [--arch A] [--size S] [--bs B] [--data DIR] [--device cuda|cpu]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import timm
import torch
from fastai.callback.core import Callback

from herlev_fa import DataConfig, ModelConfig, TrainConfig
from herlev_fa.config import resolve_device, resolve_precision
from herlev_fa.training.loop import _fit_learner, prepare, resolve_task

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "herlev" / "letterbox200"


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def plain_loop(arch: str, size: int, bs: int, device: str, precision: str, steps: int = 30) -> float:
    """Images/s of a bare training loop on tensors already on the device."""
    model = timm.create_model(arch, num_classes=5).to(device)
    channels_last = device.startswith("cuda")
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
    x = torch.randn(bs, 3, size, size, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 5, (bs,), device=device)
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model.train()

    def step():
        with torch.autocast(torch.device(device).type, dtype=dtype, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(5):  # warm-up: cuDNN autotuning, allocator
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * bs / (time.perf_counter() - start)


class TrainTimer(Callback):
    """Wall time and images of the training part of each epoch (validation excluded)."""

    order = 100

    def __init__(self, device: str):
        self.device, self.epochs = device, []

    def before_train(self) -> None:
        sync(self.device)
        self.start, self.images = time.perf_counter(), 0

    def after_batch(self) -> None:
        if self.training:
            self.images += len(self.learn.yb[0])

    def after_train(self) -> None:
        sync(self.device)
        self.epochs.append(self.images / (time.perf_counter() - self.start))


def herlev_loop(data: Path, arch: str, size: int, bs: int, device: str, precision: str) -> float:
    """Images/s of herlev's own training loop on real images (second epoch)."""
    cfg = TrainConfig(DataConfig(data, size=size, bs=bs, folds=4, seed=0), ModelConfig(arch, pretrained=False),
                      epochs=2, lr=1e-3, device=device, precision=precision, quiet=True)
    prepared = prepare(cfg, resolve_task(cfg))
    timer = TrainTimer(device)
    learn, _, _ = _fit_learner(cfg, prepared, 0, device, [timer], Path("."))
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(2, 1e-3)
    return timer.epochs[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--arch")
    parser.add_argument("--size", type=int)
    parser.add_argument("--bs", type=int, default=64)
    parser.add_argument("--data", type=Path, default=SHARED)
    args = parser.parse_args()
    device = resolve_device(args.device)
    gpu = device.startswith("cuda")
    arch = args.arch or ("resnet101" if gpu else "test_resnet")
    size = args.size or (224 if gpu else 64)
    precision = resolve_precision("auto", device)
    card = torch.cuda.get_device_name() if gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"{card}: {arch}, {size} px, batch {args.bs}, {precision}")
    a = plain_loop(arch, size, args.bs, device, precision)
    print(f"(a) plain PyTorch loop, tensors on the device: {a:8.1f} images/s")
    b = herlev_loop(args.data, arch, size, args.bs, device, precision)
    print(f"(b) herlev training loop, real images + augmentation: {b:8.1f} images/s")
    print(f"b/a = {b / a:.2f}")


if __name__ == "__main__":
    main()

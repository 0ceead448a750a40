"""Per-epoch fixed costs of a training run: (wall time of the fits) / (time inside the batches), one run.

Trains one fold exactly as `herlev train` does (`training.loop.train_fold`: the feed, the Learner,
its callbacks, the checkpoints on their default schedule, the epoch log) with a callback that
times every training and validation batch, from the batch's start to its end, and the fits as a
whole. What the fits take beyond their batches (starting an epoch, the validation pass's
set-up, metrics, logging, checkpoints) is the per-epoch overhead; goal <= 1.05.

Defaults: resnet101 at 32 px, 3 epochs, on the real cells (the CPU setting of issue 10); on a
GPU pass --size 224.

    python bench/epoch_overhead.py [--arch resnet101] [--size 32] [--epochs 3] [--bs 32] [--device cpu]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from fastai.callback.core import Callback

from herlev_fa.config import DataConfig, ModelConfig, TrainConfig, resolve_device
from herlev_fa.training.loop import prepare, resolve_task, train_fold

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "herlev" / "letterbox200"


class BatchTimer(Callback):
    """Sums the time inside batches (before_batch to after_batch) and the wall time of every fit."""

    order = -100  # first in, so that every other callback's batch work is counted as batch time

    def __init__(self, device: str):
        self.device, self.batches, self.fits, self.n = device, 0.0, 0.0, 0

    def _now(self) -> float:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter()

    def before_fit(self) -> None:
        self.fit_start = self._now()

    def after_fit(self) -> None:
        self.fits += self._now() - self.fit_start

    def before_batch(self) -> None:
        self.batch_start = self._now()

    def after_batch(self) -> None:
        self.batches += self._now() - self.batch_start
        self.n += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=SHARED)
    parser.add_argument("--arch", default="resnet101")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--bs", type=int, default=32)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)
    cfg = TrainConfig(DataConfig(args.data, size=args.size, bs=args.bs), ModelConfig(args.arch, pretrained=False),
                      epochs=args.epochs, lr=1e-3, device=device, quiet=True)
    data = prepare(cfg, resolve_task(cfg))
    timer = BatchTimer(device)
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        train_fold(cfg, data, 0, Path(out) / "run", device, cbs=[timer])
        whole = time.perf_counter() - start
    print(f"{args.arch}, {args.size} px, batch {args.bs}, {args.epochs} epochs on {device}: {timer.n} batches")
    print(f"time inside batches: {timer.batches:8.2f} s")
    print(f"wall time of the fit: {timer.fits:8.2f} s")
    print(f"whole fold run (fit + held-out predictions + run folder): {whole:8.2f} s")
    print(f"fit / batches = {timer.fits / timer.batches:.3f}")


if __name__ == "__main__":
    main()

"""What makes the CPU proxy slow or fast: one fold's epoch under each setting, as ratios in one run.

The CPU proxy (ResNet-18, 64 px, real cells) is how training recipes are compared without a GPU,
so its speed decides how many configurations can be tried. Each setting trains the same fold
for `--epochs` epochs from the same seed, in this process (or a child process for the thread
count, which torch fixes per process), and reports seconds per epoch (training + validation):

- validation loader workers: fastai's default for a DataLoader (one worker process per core,
  started for every validation pass) against none (a batch is one index operation on the cache);
- fp32 against bf16 autocast (CPUs with AVX-512 BF16 or AMX run it natively);
- torch threads: 1 against 2 (run with other work on the machine, the two threads of one run
  wait for each other whenever another process takes a core).

    python bench/cpu_proxy.py [--arch resnet18] [--size 64] [--epochs 2] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "herlev" / "letterbox200"


def epoch_seconds(data: Path, arch: str, size: int, epochs: int, precision: str, valid_workers: int | None) -> float:
    """Seconds per epoch of one fold's fit (fold 0, seed 0) in this process."""
    from herlev_fa.config import DataConfig, ModelConfig, TrainConfig
    from herlev_fa.training.loop import _fit_learner, prepare, resolve_task

    cfg = TrainConfig(DataConfig(data, size=size, seed=0), ModelConfig(arch, head="cls", pretrained=False),
                      epochs=epochs, lr=1e-3, device="cpu", precision=precision, keep="last", quiet=True)
    prepared = prepare(cfg, resolve_task(cfg))
    with tempfile.TemporaryDirectory() as scratch:
        learn, _, _ = _fit_learner(cfg, prepared, 0, "cpu", [], Path(scratch))
        if valid_workers is None:  # fastai's default for a DataLoader: one worker per core
            from fastai.torch_core import defaults

            learn.dls.valid.fake_l.num_workers = min(16, defaults.cpus)
        with learn.no_bar(), learn.no_logging():
            start = time.perf_counter()
            learn.fit_one_cycle(epochs, 1e-3)
    return (time.perf_counter() - start) / epochs


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--one", help=argparse.SUPPRESS)  # child: "threads,precision,valid_workers" -> seconds as JSON
    args = p.parse_args()
    if args.one:
        import torch

        threads, precision, workers = args.one.split(",")
        torch.set_num_threads(int(threads))
        print(json.dumps(epoch_seconds(args.data, args.arch, args.size, args.epochs, precision,
                                       None if workers == "default" else int(workers))))
        return

    def run(threads: int, precision: str, workers: str) -> float:
        out = subprocess.run([sys.executable, __file__, "--arch", args.arch, "--size", str(args.size), "--epochs",
                              str(args.epochs), "--data", str(args.data), "--one", f"{threads},{precision},{workers}"],
                             capture_output=True, text=True, check=True)
        return float(out.stdout.strip().splitlines()[-1])

    print(f"{args.arch}, {args.size} px, fold 0 of the real cells, {args.epochs} epochs per setting: seconds per epoch")
    rows = [("1 thread, fp32, validation workers: fastai default", (1, "fp32", "default")),
            ("1 thread, fp32, validation workers: none", (1, "fp32", "0")),
            ("1 thread, bf16, validation workers: none", (1, "bf16", "0")),
            ("2 threads, bf16, validation workers: none", (2, "bf16", "0"))]
    seconds = {}
    for label, setting in rows:
        seconds[setting] = run(*setting)
        print(f"  {label:52s} {seconds[setting]:6.1f} s", flush=True)
    s = list(seconds.values())
    print(f"validation workers default / none: {s[0] / s[1]:.2f}; fp32 / bf16: {s[1] / s[2]:.2f}; "
          f"2 threads / 1 thread: {s[3] / s[2]:.2f}; "
          f"today's default (first row) / the proxy's (third): {s[0] / s[2]:.2f}")


if __name__ == "__main__":
    main()

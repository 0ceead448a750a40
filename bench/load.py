"""Load benchmark: `predict` over many small images runs in bounded memory.

Runs `herlev_fa.prediction` in fresh subprocesses on N = 1,000 and N = 10,000 small images (and,
when ../shared/data/herlev is there and the explain module is installed, `quantify` over every
shared cell) and prints images/s and the peak resident memory of each, with the ratio of peak
memory between the large and the small run: bounded memory means a ratio near 1, not 10.

    python bench/load.py [--n 10000] [--size 32]

A tiny test_resnet run is trained first (a few seconds). CPU figures depend on the machine;
compare ratios, not absolute numbers.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

QUANTIFY_CHILD = r"""
import json, resource, sys, time
from herlev_fa.config import IGSettings
from herlev_fa.explanation.report import quantify
run, data, out = sys.argv[1], sys.argv[2], sys.argv[3]
t = time.perf_counter()
result = quantify(run, data=data, split="all", out=out, settings=IGSettings(steps=16, device="cpu"), progress=False)
seconds = time.perf_counter() - t
print(json.dumps({"n": len(result.table), "seconds": seconds,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

CHILD = r"""
import json, resource, sys, time
from herlev_fa.config import PredictSettings
from herlev_fa.prediction import predict
run, folder = sys.argv[1], sys.argv[2]
t = time.perf_counter()
preds = predict(run, [folder], PredictSettings(bs=256, device="cpu", progress=False))
seconds = time.perf_counter() - t
print(json.dumps({"n": len(preds), "seconds": seconds,
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def make_images(folder: Path, n: int, size: int, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"img{i:05d}.png")
    return folder


def train_tiny_run(tmp: Path) -> Path:
    from herlev_fa import DataConfig, ModelConfig, TrainConfig, train, write_synthetic

    data = write_synthetic(tmp / "synth", per_class=8, size=48)
    cfg = TrainConfig(DataConfig(data, size=32, bs=16, folds=2), ModelConfig("test_resnet", pretrained=False),
                      epochs=1, device="cpu", out=tmp / "runs", name="tiny", quiet=True)
    return train(cfg).runs[0]


def child(code: str, *args: object) -> dict:
    done = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000, help="images in the large run")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        t = time.perf_counter()
        run = train_tiny_run(tmp)
        small_n = max(1, args.n // 10)
        small = make_images(tmp / "small", small_n, args.size)
        large = make_images(tmp / "large", args.n, args.size, seed=1)
        print(f"setup (tiny run + {small_n + args.n} images): {time.perf_counter() - t:.1f} s")
        rows = {name: child(CHILD, run, folder) for name, folder in (("small", small), ("large", large))}
        shared = Path(__file__).resolve().parents[2] / "shared" / "data" / "herlev" / "letterbox200"
        if shared.is_dir():  # every real cell with its mask, 16 IG steps each
            q = child(QUANTIFY_CHILD, run, shared, tmp / "quantify")
            print(f"quantify {q['n']:>5} real cells: {q['n'] / q['seconds']:8.1f} images/s, "
                  f"peak memory {q['peak_mb']:7.1f} MB")
    for r in rows.values():
        print(f"predict {r['n']:>6} images: {r['n'] / r['seconds']:8.1f} images/s, peak memory {r['peak_mb']:7.1f} MB")
    ratio = rows["large"]["peak_mb"] / rows["small"]["peak_mb"]
    print(f"peak memory ratio large/small: {ratio:.2f} for {args.n / small_n:.0f}x the images "
          f"({'bounded' if ratio < 1.5 else 'GROWS with the number of images'})")


if __name__ == "__main__":
    main()

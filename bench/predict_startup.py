"""Prediction start-up benchmark: `herlev predict` on one image against `python -c "import torch, timm"`, in one run.

A user who predicts one image waits for the whole process: the CLI, the libraries, the run's
weights, one forward pass and the CSV. Loading a run needs torch and timm; everything beyond them
is overhead, and the target is a ratio of at most 1.5. Each command runs in fresh processes,
after one warm-up each for the file cache, the two alternating so that a change in the machine's
load hits both; this prints the median wall time and the median CPU time (user + system of the
process: less sensitive to other work on a shared machine than the wall time) of each, their
ratios, and the libraries beyond torch and timm that the prediction imported.

    python bench/predict_startup.py --run RUN --image IMAGE [--repeat 5]

RUN is any run folder (a tiny one will do: `herlev train --arch test_resnet --no-pretrained
--size 32 --epochs 1 --lr 1e-3 --fold 0 --data DATA --out runs --name tiny`).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BASELINE = 'python -c "import torch, timm"'
WATCHED = ("fastai", "sklearn", "pandas", "matplotlib", "albumentations", "cv2", "scipy", "captum", "accelerate",
           "herlev_fa.training.loop", "herlev_fa.training.learner", "herlev_fa.data.feed")
PROBE = ("import runpy, sys\nsys.argv = ['herlev'] + sys.argv[1:]\ntry:\n    runpy.run_module('herlev_cli.main', "
         "run_name='__main__')\nexcept SystemExit as e:\n    code = e.code\nelse:\n    code = 0\n"
         f"print('imported:', ','.join(m for m in {WATCHED!r} if m in sys.modules), file=sys.stderr)\n"
         "sys.exit(code)")


def timed(cmd: list[str]) -> tuple[float, float]:
    """Wall seconds and CPU seconds (user + system) of one run of `cmd`; raises if it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", type=Path, required=True, help="a run folder")
    parser.add_argument("--image", type=Path, required=True, help="one image file")
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command (medians reported)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        predict_args = ["predict", str(args.image), "--run", str(args.run), "--out", str(Path(tmp) / "p.csv"),
                        "--device", "cpu"]
        cases = {BASELINE: [sys.executable, "-c", "import torch, timm"],
                 "herlev predict (one image)": [sys.executable, "-m", "herlev_cli.main", *predict_args]}
        for cmd in cases.values():
            timed(cmd)  # warm the file cache
        runs: dict[str, list[tuple[float, float]]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, cmd in cases.items():
                runs[name].append(timed(cmd))
        probe = subprocess.run([sys.executable, "-c", PROBE, *predict_args], capture_output=True, text=True)
    imported = next((line.split(":", 1)[1].strip() for line in probe.stderr.splitlines()
                     if line.startswith("imported:")), "?")
    wall = {name: statistics.median(w for w, _ in r) for name, r in runs.items()}
    cpu = {name: statistics.median(c for _, c in r) for name, r in runs.items()}
    print("| command | median wall s | ratio | median CPU s | ratio |\n|---|---|---|---|---|")
    for name in cases:
        print(f"| {name} | {wall[name]:.2f} | {wall[name] / wall[BASELINE]:.2f} | {cpu[name]:.2f} | "
              f"{cpu[name] / cpu[BASELINE]:.2f} |")
    print(f"\nbeyond torch and timm, predict imported: {imported or 'none of ' + ', '.join(WATCHED)}")


if __name__ == "__main__":
    main()

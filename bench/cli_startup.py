"""CLI start-up benchmark: `herlev --help` against `python -c "import torch"`, in one run.

Every command pays the CLI's start-up before doing anything, so the heavy libraries (torch,
fastai, timm, captum, matplotlib, pandas, albumentations) are imported inside the commands that
use them. This prints the median wall time of each (fresh processes, after one warm-up each for
the file cache) and their ratio; the target is a ratio of at most 0.5.

    python bench/cli_startup.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

CASES = {
    "herlev --help": [sys.executable, "-m", "herlev_cli.main", "--help"],
    "herlev train --bogus (usage error)": [sys.executable, "-m", "herlev_cli.main", "train", "--bogus"],
    "herlev --version": [sys.executable, "-m", "herlev_cli.main", "--version"],
    'python -c "import torch"': [sys.executable, "-c", "import torch"],
}


def median_seconds(cmd: list[str], repeat: int) -> float:
    subprocess.run(cmd, capture_output=True)  # warm the file cache
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        subprocess.run(cmd, capture_output=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5, help="timed runs per command (median reported)")
    args = parser.parse_args()
    seconds = {name: median_seconds(cmd, args.repeat) for name, cmd in CASES.items()}
    torch_s = seconds['python -c "import torch"']
    print("| command | median s | ratio to import torch |\n|---|---|---|")
    for name, s in seconds.items():
        print(f"| {name} | {s:.3f} | {s / torch_s:.2f} |")


if __name__ == "__main__":
    main()

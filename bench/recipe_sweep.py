"""Which training recipe and head? Every configuration on the same folds and seeds, one line each.

Each configuration is a set of `TrainConfig` changes against the CPU proxy's base (ResNet-18,
64 px, 30 epochs, batch 32, lr 1e-3, 4 folds, from scratch, bf16 autocast). Every (configuration,
seed, fold) is an ordinary `herlev train --fold K` run folder, `OUT/<configuration>/seed<S>/fold<K>`,
trained by `herlev_fa.training.loop.train` in a pool of worker processes (one thread each: on a
shared 2-core machine two single-threaded runs side by side train 4-5x faster than one run on two
threads, whose threads wait for each other whenever another process takes a core). A finished
fold run is reused, an interrupted one continues from its checkpoint, so the sweep resumes where
it was stopped and a rerun with more configurations or seeds trains only what is new.

The table (OUT/sweep.md, rewritten after every finished fold run) has one line per configuration
and seed, and one per configuration pooled over its seeds: mean ± sd over folds (over seeds for
the pooled line) of accuracy, binary accuracy, AUC, quadratic kappa, MAE of the grade, big
mistakes and ECE; the paired difference of accuracy against the reference configuration on the
same folds and seeds, with the folds it won and the Wilcoxon signed-rank p-value; how the kept
weights were chosen; and the wall time of each run. Every configuration tried stays in the table.

    python bench/recipe_sweep.py --configs cls-poster,cls-cells --seeds 42 [--workers 2] [--out runs/recipes]
    python bench/recipe_sweep.py --list          # the configurations this script knows
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import math
import multiprocessing
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "herlev" / "letterbox200"
REFERENCE = "cls-poster"  # today's classifier: the poster's recipe, the last epoch kept

# name -> (what it changes against the base, for the table; TrainConfig / DataConfig / ModelConfig fields).
# The base is the poster's recipe; each entry says what it changes.
CONFIGS: dict[str, tuple[str, dict]] = {
    "cls-poster": ("cls, the poster's recipe, last epoch", {}),
    "cls-poster-best": ("epoch chosen on an inner 15% split", {"keep": "best", "val_split": 0.15}),
    "cls-cells": ("augmentation: any rotation, zoom 0.8-1.25 moving the cell, lighting ±20%", {"policy": "cells"}),
    "cls-cells-96": ("cells augmentation, 96 px", {"policy": "cells", "size": 96}),
    "cls-cells-60": ("cells augmentation, 60 epochs", {"policy": "cells", "epochs": 60}),
    "sord-cells": ("sord head (dlordinal's soft ordinal labels), cells augmentation",
                   {"head": "sord", "policy": "cells"}),
    "corn-cells": ("corn head (coral-pytorch), cells augmentation", {"head": "corn", "policy": "cells"}),
    "sord-poster": ("sord head (dlordinal's soft ordinal labels)", {"head": "sord"}),
    "corn-poster": ("corn head (coral-pytorch)", {"head": "corn"}),
    "cls-poster-96": ("96 px", {"size": 96}),
    "cls-poster-60": ("60 epochs", {"epochs": 60}),
    "sord-cells-60": ("sord head, cells augmentation, 60 epochs", {"head": "sord", "policy": "cells", "epochs": 60}),
    "cls-cells-60-r18d": ("ResNet-18-D (average-pool shortcuts), cells augmentation, 60 epochs",
                          {"arch": "resnet18d", "policy": "cells", "epochs": 60}),
    "cls-cells-60-ls": ("cells augmentation, 60 epochs, label smoothing 0.1",
                        {"policy": "cells", "epochs": 60, "label_smoothing": 0.1}),
    "cls-cells-60-ema": ("cells augmentation, 60 epochs, weight average (EMA, decay 0.995 per batch)",
                         {"policy": "cells", "epochs": 60, "ema": 0.995}),
    "cls-cells-100": ("cells augmentation, 100 epochs", {"policy": "cells", "epochs": 100}),
    "cls-cells-100-r18d": ("ResNet-18-D, cells augmentation, 100 epochs",
                           {"arch": "resnet18d", "policy": "cells", "epochs": 100}),
    "clsreg-cells-60": ("cls_reg head (the regression constraint, λ 0.3), cells augmentation, 60 epochs",
                        {"head": "cls_reg", "mse_weight": 0.3, "policy": "cells", "epochs": 60}),
    "cls-cells-60-mixup": ("cells augmentation, 60 epochs, MixUp (Beta(0.4, 0.4), fastai)",
                           {"policy": "cells", "epochs": 60, "mixup": 0.4}),
    "cls-cells-60-cutmix": ("cells augmentation, 60 epochs, CutMix (Beta(1, 1), fastai)",
                            {"policy": "cells", "epochs": 60, "cutmix": 1.0}),
    "cls-cells-60-lr2e-3": ("cells augmentation, 60 epochs, peak learning rate 2e-3",
                            {"policy": "cells", "epochs": 60, "lr": 2e-3}),
    "cls-cells-60-lr5e-4": ("cells augmentation, 60 epochs, peak learning rate 5e-4",
                            {"policy": "cells", "epochs": 60, "lr": 5e-4}),
    "cls-cells-60-wd0.2": ("cells augmentation, 60 epochs, weight decay 0.2",
                           {"policy": "cells", "epochs": 60, "wd": 0.2}),
    "cls-cells-60-wd0.01": ("cells augmentation, 60 epochs, weight decay 0.01",
                            {"policy": "cells", "epochs": 60, "wd": 0.01}),
    "cls-poster-lr3e-3": ("peak learning rate 3e-3", {"lr": 3e-3}),
    "cls-poster-bs16": ("batch 16 (twice the steps)", {"bs": 16}),
}
BASE = {"arch": "resnet18", "size": 64, "epochs": 30, "bs": 32, "lr": 1e-3, "folds": 4, "precision": "bf16",
        "head": "cls", "keep": "last", "pretrained": False}
DATA_FIELDS = {"size", "folds", "seed", "bs", "augment", "policy"}
MODEL_FIELDS = {"arch", "head", "pretrained", "mse_weight"}
METRICS = ("accuracy", "tta_accuracy", "binary_accuracy", "auc", "kappa", "mae", "big_mistakes", "ece")
TITLES = {"accuracy": "accuracy (%)", "tta_accuracy": "with 8-view TTA (%)", "binary_accuracy": "binary (%)",
          "auc": "AUC", "kappa": "kappa", "mae": "MAE (grades)", "big_mistakes": "2+ off (%)", "ece": "ECE"}
PERCENT = {"accuracy", "tta_accuracy", "binary_accuracy", "big_mistakes"}


def settings(name: str, seed: int) -> dict:
    """The full settings of one configuration at one seed."""
    return {**BASE, **CONFIGS[name][1], "seed": seed}


def train_config(settings: dict, data: Path, out: Path, fold: int, resume: bool):
    from herlev_fa import DataConfig, ModelConfig, TrainConfig

    top = {k: v for k, v in settings.items() if k not in DATA_FIELDS | MODEL_FIELDS}
    return TrainConfig(DataConfig(data, **{k: v for k, v in settings.items() if k in DATA_FIELDS}),
                       ModelConfig(**{k: v for k, v in settings.items() if k in MODEL_FIELDS}),
                       fold=fold, out=out.parent, name=out.name, quiet=True, device="cpu", resume=resume, **top)


def run_fold(settings: dict, data: Path, folder: Path, fold: int) -> dict:
    """Train (or continue) one fold run in this worker; its metrics and wall time."""
    import torch

    torch.set_num_threads(1)
    from herlev_fa.training.loop import train

    resume = (folder / "checkpoint").is_dir()
    if folder.exists() and not resume:
        shutil.rmtree(folder)  # killed before its first checkpoint: nothing to continue
    started = time.time()
    train(train_config(settings, data, folder, fold, resume))
    return {"seconds": time.time() - started}


def fold_metrics(folder: Path) -> dict | None:
    """Metrics of a finished fold run, with the MAE of the predicted grade; None if unfinished."""
    if not (folder / "herlev.json").is_file():
        return None
    metrics = json.loads((folder / "metrics.json").read_text())
    meta = json.loads((folder / "herlev.json").read_text())
    pred = pd.read_csv(folder / "predictions.csv")
    sev = np.asarray(meta["task"]["severities"], float)
    metrics["mae"] = float(np.abs(sev[pred["y"].to_numpy()] - sev[pred["pred"].to_numpy()]).mean())
    metrics["tta_accuracy"] = tta_accuracy(folder)
    metrics["seconds"] = meta.get("train_seconds", math.nan)
    metrics["kept"] = meta.get("config", {}).get("keep", "best")
    return metrics


def tta_accuracy(folder: Path) -> float:
    """Accuracy on the held-out fold with the 8 dihedral views averaged (`herlev predict --tta`); cached in tta.json."""
    cached = folder / "tta.json"
    if not cached.is_file():
        import torch

        torch.set_num_threads(1)
        from herlev_fa.evaluation import held_out_items
        from herlev_fa.metrics import severity_metrics
        from herlev_fa.prediction import predict_outputs
        from herlev_fa.runs import load_run

        run = load_run(folder)
        items = held_out_items(run)
        out, _ = predict_outputs(run, list(items["path"]), tta=True, progress=False)
        metrics = severity_metrics(out, items["y"].to_numpy(), run.head, run.task.severities)
        cached.write_text(json.dumps({"accuracy": metrics["accuracy"]}))
    return json.loads(cached.read_text())["accuracy"]


def cell(metric: str, values: np.ndarray) -> str:
    scale = 100 if metric in PERCENT else 1
    digits = 1 if metric in PERCENT else (3 if metric in ("mae", "ece") else 2)
    values = scale * values
    return f"{values.mean():.{digits}f} ± {values.std(ddof=1) if len(values) > 1 else 0:.{digits}f}"


def table(out: Path) -> str:
    """Every configuration and seed under `out`, finished or not (in `CONFIGS` order)."""
    from scipy.stats import wilcoxon

    names = [n for n in CONFIGS if (out / n).is_dir()]
    seeds = sorted({int(p.name[4:]) for n in names for p in (out / n).glob("seed*")})

    done = {(n, s): [fold_metrics(out / n / f"seed{s}" / f"fold{k}") for k in range(BASE["folds"])]
            for n in names for s in seeds if (out / n / f"seed{s}").is_dir()}
    header = (["configuration", "seed", "what changes"] + [TITLES[m] for m in METRICS]
              + ["accuracy − reference, same folds (won, p)", "minutes per fold"])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    ref = {s: done.get((REFERENCE, s)) for s in seeds}
    for n in names:
        pooled_gain, pooled = [], {m: [] for m in METRICS}
        for s in seeds:
            if (n, s) not in done:
                continue
            runs = done[(n, s)]
            if any(r is None for r in runs):
                lines.append(f"| {n} | {s} | {CONFIGS[n][0]} | " + " | ".join(["…"] * (len(METRICS) + 2)) + " |")
                continue
            row = [n, str(s), CONFIGS[n][0]]
            for m in METRICS:
                values = np.array([r[m] for r in runs], float)
                pooled[m].append(values.mean())
                row.append(cell(m, values))
            base = ref[s]
            if base and all(r is not None for r in base):
                gain = 100 * (np.array([r["accuracy"] for r in runs]) - np.array([r["accuracy"] for r in base]))
                pooled_gain.extend(gain)
                row.append(f"{gain.mean():+.1f} ({int((gain > 0).sum())}/{len(gain)})")
            else:
                row.append("…")
            row.append(f"{np.mean([r['seconds'] for r in runs]) / 60:.1f}")
            lines.append("| " + " | ".join(row) + " |")
        if len(pooled["accuracy"]) > 1:  # every seed of this configuration finished
            row = [f"**{n}**", f"{len(pooled['accuracy'])} seeds", "mean ± sd over seeds"]
            row += [cell(m, np.array(pooled[m])) for m in METRICS]
            if pooled_gain and n != REFERENCE:
                g = np.array(pooled_gain)
                p = wilcoxon(g).pvalue if np.any(g != 0) else 1.0
                row.append(f"{g.mean():+.1f} ({int((g > 0).sum())}/{len(g)}, p={p:.2g})")
            else:
                row.append("")
            row.append("")
            lines.append("| " + " | ".join(row) + " |")
    base = ", ".join(f"{k} {v}" for k, v in BASE.items())
    return (f"Base: {base}; 4 stratified folds per seed; every number on each fold's held-out cells, "
            "weights chosen without them (kept: last epoch, or the best epoch on an inner validation split "
            "of the training folds where a configuration says so).\n\n" + "\n".join(lines) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--configs", default=REFERENCE, help="comma-separated names (see --list)")
    p.add_argument("--seeds", default="42")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--out", type=Path, default=Path("runs/recipes"))
    p.add_argument("--list", action="store_true")
    p.add_argument("--table-only", action="store_true", help="rewrite the table from the finished runs")
    args = p.parse_args()
    if args.list:
        for name, (what, change) in CONFIGS.items():
            print(f"{name:24s} {what}  {change}")
        return
    names, seeds = args.configs.split(","), [int(s) for s in args.seeds.split(",")]
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        sys.exit(f"unknown configuration(s) {', '.join(unknown)}: see --list")
    jobs = [(n, s, k) for n in names for s in seeds for k in range(BASE["folds"])
            if fold_metrics(args.out / n / f"seed{s}" / f"fold{k}") is None]

    def write() -> None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "sweep.md").write_text(table(args.out))

    if not args.table_only and jobs:
        print(f"{len(jobs)} fold runs to train, {args.workers} at a time", flush=True)
        with cf.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {pool.submit(run_fold, settings(n, s), args.data, args.out / n / f"seed{s}" / f"fold{k}", k):
                       (n, s, k) for n, s, k in jobs}
            for f in cf.as_completed(futures):
                n, s, k = futures[f]
                try:
                    print(f"[{n} seed {s} fold {k}] {f.result()['seconds'] / 60:.1f} min", flush=True)
                except Exception as e:  # noqa: BLE001 - one failed run should not stop the others
                    print(f"[{n} seed {s} fold {k}] FAILED: {type(e).__name__}: {e}", flush=True)
                write()
    write()
    print((args.out / "sweep.md").read_text())


if __name__ == "__main__":
    main()

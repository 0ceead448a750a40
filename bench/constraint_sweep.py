"""Does the regression constraint help? cls and reg once, cls_reg at several loss weights, same folds.

Each configuration is an ordinary `herlev reproduce` (`herlev_fa.reproduction`) into its own folder
under --out, so every fold run is resumable and reused on a rerun; all share the data, split,
schedule, seed and augmentation, and only the head and lambda (`--mse-weight`) change. Prints
one table (mean ± std over folds, and each configuration's accuracy minus cls's on the same
held-out folds, with how many folds it beat cls on) and writes it to OUT/sweep.md, with the
wall time.

    python bench/constraint_sweep.py --data DIR [--arch resnet18] [--size 64] [--epochs 30]
        [--weights-lambda 0.1,0.3,1,3] [--keep last] [--out runs/sweep] [--device auto]

The issue's protocol on a GPU: --arch resnet101 --size 224 --epochs 30 --bs 32 --keep last.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from herlev_fa import DataConfig, ModelConfig, TrainConfig
from herlev_fa.atomic import write_text
from herlev_fa.metrics import EPOCH_METRICS
from herlev_fa.reproduction import COLUMNS, ReproduceConfig, ours_cell, reproduce

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data" / "herlev" / "letterbox200"
METRICS = EPOCH_METRICS  # the five of the earlier sweeps, so their tables stay comparable


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=SHARED)
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--bs", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--folds", type=int, default=4)
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--keep", default="last", choices=("best", "last"))
    p.add_argument("--weights-lambda", default="0.1,0.3,1,3", help="comma-separated lambdas for cls_reg")
    p.add_argument("--mse-warmup", type=float, default=0.0, help="cls_reg: ramp lambda in over this fraction")
    p.add_argument("--no-reg", action="store_true", help="skip the reg row (only the gain over cls is wanted)")
    p.add_argument("--out", type=Path, default=Path("runs/sweep"))
    p.add_argument("--device", default="auto")
    args = p.parse_args()

    base = TrainConfig(DataConfig(args.data, size=args.size, folds=args.folds, seed=args.seed, bs=args.bs),
                       ModelConfig(args.arch, pretrained=False), epochs=args.epochs, lr=args.lr,
                       keep=args.keep, device=args.device, quiet=True)
    runs = [("cls", "cls", None)] + ([] if args.no_reg else [("reg", "reg", None)])
    ramp = f", ramped over {args.mse_warmup:.0%}" if args.mse_warmup else ""
    runs += [(f"cls_reg λ={lam:g}{ramp}", "cls_reg", lam) for lam in map(float, args.weights_lambda.split(","))]
    started, rows, reference = time.time(), [], None
    for label, head, lam in runs:
        cfg = base if lam is None else replace(base, model=replace(base.model, mse_weight=lam),
                                               mse_warmup=args.mse_warmup)
        folder = args.out / (head if lam is None else f"cls_reg-{lam:g}" + (f"-w{args.mse_warmup:g}" if ramp else ""))
        t0 = time.time()
        result = reproduce(ReproduceConfig(cfg, heads=(head,), out=folder),
                           log=lambda line, label=label: print(f"[{label}] {line}", flush=True))
        accuracy = np.array([m["accuracy"] for m in result.metrics[head]])  # per fold
        reference = accuracy if reference is None else reference  # cls, the first configuration
        gain = accuracy - reference  # paired: the same held-out images
        rows.append([label] + [ours_cell(m, result.summary[head][m]) for m in METRICS]
                    + [f"{100 * gain.mean():+.1f} ({int((gain > 0).sum())}/{len(gain)})"])
        print(f"[{label}] done in {time.time() - t0:.0f} s: " + ", ".join(rows[-1][1:]), flush=True)

    header = ["configuration"] + [COLUMNS[m] for m in METRICS] + ["accuracy − cls, same folds (folds better)"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    text = (f"{args.arch}, {args.size} px, {args.epochs} epochs, batch {args.bs}, lr {args.lr}, "
            f"{args.folds}-fold, seed {args.seed}, from scratch, kept epoch: {args.keep}; "
            f"wall time of this call {time.time() - started:.0f} s (fold runs reused from an earlier call cost "
            "nothing)\n\n" + "\n".join(table) + "\n")
    write_text(args.out / "sweep.md", text)  # atomic: whole or absent
    print(text)


if __name__ == "__main__":
    main()

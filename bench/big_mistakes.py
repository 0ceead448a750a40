"""Big mistakes of the heads of a constraint sweep, paired over the same held-out cells.

Reads the held-out predictions (`predictions.csv`) of every fold run that
`bench/constraint_sweep.py` left under --sweep (`<configuration>/<head>/fold<k>/`), computes the
cytologist's metrics of `herlev_fa.metrics` per fold, and compares every configuration with the
first (`cls` when present) on the same cells: per fold, and pooled over folds with an exact
McNemar test on the cells one configuration gets badly wrong (two or more severity levels off)
and the other does not. Prints a markdown table and writes it to SWEEP/big_mistakes.md.

    python bench/big_mistakes.py [--sweep runs/sweep]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import binomtest

from herlev_fa.atomic import write_text
from herlev_fa.labels import Task
from herlev_fa.metrics import decode, severity_levels, severity_metrics
from herlev_fa.model.heads import Head, get_head

ORDER = ("cls", "reg")  # shown first; the other configurations (cls_reg-<lambda>) follow by name


def fold_runs(sweep: Path) -> dict[str, list[Path]]:
    """Configuration name -> its finished fold run folders in fold order, for the folds all configurations finished."""
    found: dict[str, list[Path]] = {}
    for pred in sorted(sweep.glob("*/*/fold*/predictions.csv")):
        run = pred.parent
        if (run / "herlev.json").is_file():
            found.setdefault(run.parent.parent.name, []).append(run)
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER)
    common = set.intersection(*(set(p.name for p in runs) for runs in found.values())) if found else set()
    # only the folds every configuration has finished: the comparison stays paired while a study runs
    return {n: sorted((p for p in found[n] if p.name in common), key=lambda p: int(p.name[4:])) for n in names}


def read_fold(run: Path) -> tuple[pd.DataFrame, np.ndarray, Head, Task]:
    """Held-out predictions of one fold run: the frame, the raw outputs [N, C], the head and the task."""
    meta = json.loads((run / "herlev.json").read_text(encoding="utf-8"))
    frame = pd.read_csv(run / "predictions.csv").sort_values("rel").reset_index(drop=True)  # same order in every run
    out = np.array(frame[[c for c in frame.columns if c.startswith("out_")]], dtype=np.float32)  # writable, for torch
    return frame, out, get_head(meta["head"]), Task.from_json(meta["task"])


def big_mistake_mask(fold: tuple[pd.DataFrame, np.ndarray, Head, Task]) -> np.ndarray:
    """Per held-out cell of a fold [N]: predicted two or more severity levels from the truth."""
    frame, out, head, task = fold
    _, _, pred = decode(out, head, task.severities)
    level = severity_levels(task.severities)
    return np.abs(level[pred] - level[frame["y"].to_numpy()]) >= 2


def fold_metrics(fold: tuple[pd.DataFrame, np.ndarray, Head, Task]) -> dict:
    frame, out, head, task = fold
    return severity_metrics(out, frame["y"].to_numpy(), head, task.severities, full=False)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sweep", type=Path, default=Path("runs/sweep"))
    args = p.parse_args()
    runs = fold_runs(args.sweep)
    if not runs or not next(iter(runs.values())):
        raise SystemExit(f"no finished fold run with predictions.csv under "
                         f"{args.sweep}/<configuration>/<head>/fold<k>/")
    reference = next(iter(runs))
    ref_folds = [read_fold(r) for r in runs[reference]]
    ref_metrics = [fold_metrics(f) for f in ref_folds]
    ref_mask = np.concatenate([big_mistake_mask(f) for f in ref_folds])  # [N] over every fold
    rows = []
    for name, folders in runs.items():
        folds = [read_fold(r) for r in folders]
        if [f[0]["rel"].tolist() for f in folds] != [f[0]["rel"].tolist() for f in ref_folds]:
            raise SystemExit(f"{name} was not evaluated on the same held-out cells as {reference}: not paired")
        per_fold = [fold_metrics(f) for f in folds]
        mask = np.concatenate([big_mistake_mask(f) for f in folds])  # [N]
        only_ref, only_this = int((ref_mask & ~mask).sum()), int((mask & ~ref_mask).sum())
        p_value = binomtest(only_this, only_ref + only_this).pvalue if only_ref + only_this else 1.0
        diff = [m["big_mistakes"] - r["big_mistakes"] for m, r in zip(per_fold, ref_metrics)]
        mean = {k: float(np.mean([m[k] for m in per_fold])) for k in per_fold[0]}
        total = {k: int(sum(m[k] for m in per_fold)) for k in ("normal_cis", "normal_severe")}
        rows.append([name, f"{len(folds)}", f"{100 * mean['accuracy']:.1f}", f"{100 * mean['big_mistakes']:.1f}",
                     f"{int(mask.sum())}/{len(mask)}", str(total["normal_cis"]), str(total["normal_severe"]),
                     f"{100 * mean['sensitivity']:.1f} / {100 * mean['specificity']:.1f}",
                     f"{100 * mean['sens_at_spec95']:.1f}", "–" if np.isnan(mean["ece"]) else f"{mean['ece']:.3f}",
                     "–" if name == reference else
                     f"{100 * np.mean(diff):+.1f} ({sum(d < 0 for d in diff)}/{len(diff)}); "
                     f"{only_this} vs {only_ref}, p={p_value:.2g}"])
    header = ["configuration", "folds", "accuracy (%)", "2+ levels off (%)", "2+ levels off (cells)", "normal↔CIS",
              "normal↔severe", "sens / spec (%)", "sens. at 95% spec. (%)", "ECE",
              f"2+ levels off − {reference}, same folds (folds fewer); cells only this / only {reference}, McNemar"]
    table = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
    folds = ", ".join(p.name for p in runs[reference])
    n_folds = json.loads((runs[reference][0] / "herlev.json").read_text(encoding="utf-8"))["n_folds"]
    text = (f"Held-out predictions under {args.sweep}, folds {folds} (of {n_folds}: those every configuration has "
            "finished); rates are means over folds, counts summed over folds (each cell is held out once).\n\n"
            + "\n".join(table) + "\n")
    write_text(args.sweep / "big_mistakes.md", text)
    print(text)


if __name__ == "__main__":
    main()

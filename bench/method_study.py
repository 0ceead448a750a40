"""Six attribution methods x several heads on the real cells: localisation, the position control, sanity, faithfulness.

For each fold-run folder given (`NAME=FOLDER`, FOLDER holding fold0..fold3 of one configuration and
seed, e.g. `bench/recipe_sweep.py`'s OUT/<config>/seed42), in a pool of single-threaded workers:

* `quantify` with each method, each fold run on its own held-out cells (`--limit` a seeded sample
  per fold, or every cell), pooled: the four localisation metrics against the nucleus mask, the
  nucleus enrichment on the cell's own mask and on another cell's (the position control, with the
  paired Wilcoxon test), and the attribution's wall time per cell;
* `sanity` (cascading randomisation) on `--sanity-limit` cells of fold 0, every method;
* `faithfulness` (deletion / insertion with neighbour imputation) on `--faith-limit` cells of fold 0.

Finished pieces under OUT are reused, so a rerun resumes. Writes OUT/method_study.md (one table
per question, a row per method and head) and prints it.

    python bench/method_study.py --runs cls=runs/recipes/cls-cells-60/seed42,sord=runs/recipes/sord-cells-60/seed42 \
        --out runs/method_study [--limit 46] [--methods ig,smoothgrad,...] [--workers 2]
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np
import pandas as pd

from herlev_fa.config import ATTRIBUTION_METHODS  # the config module imports no torch: workers set threads first

METHODS = tuple(ATTRIBUTION_METHODS)


def settings(args, method: str):
    from herlev_fa.config import IGSettings

    return IGSettings(method=method, steps=args.steps, samples=args.samples, bs=16, device="cpu", precision="fp32")


def quantify_task(args, name: str, folder: Path, method: str) -> str:
    """Every fold's held-out sample with one method; the wall time per cell in timing.json."""
    import torch

    torch.set_num_threads(1)
    from herlev_fa.explanation.study import held_out_quantify

    out = args.out / name / method
    timing = out / "timing.json"
    if not timing.is_file():
        started = time.time()
        table = held_out_quantify(folder, out, settings(args, method), reuse=True, limit=args.limit)
        out.mkdir(parents=True, exist_ok=True)
        timing.write_text(json.dumps({"seconds_per_cell": (time.time() - started) / len(table), "cells": len(table)}))
    return f"{name} {method}: quantified"


def check_task(args, name: str, folder: Path, check: str) -> str:
    """The randomisation sanity check or the faithfulness curves (`check`) on fold 0, unless written before."""
    import torch

    torch.set_num_threads(1)
    from herlev_fa.explanation.faithfulness import faithfulness
    from herlev_fa.explanation.sanity import sanity

    run, limit = {"sanity": (sanity, args.sanity_limit), "faithfulness": (faithfulness, args.faith_limit)}[check]
    out = args.out / name / check
    if not (out / f"{check}.csv").is_file():
        run(folder / "fold0", args.methods, out=out, settings=settings(args, "ig"), limit=limit)
    return f"{name}: {check}"


def pooled(args, name: str, method: str) -> pd.DataFrame:
    folds = sorted((args.out / name / method).glob("fold*/quantify.csv"))
    return pd.concat([pd.read_csv(f) for f in folds], ignore_index=True)


def localisation(args, name: str, method: str) -> str:
    from herlev_fa.explanation.study import paired_comparison

    t = pooled(args, name, method)
    timing = json.loads((args.out / name / method / "timing.json").read_text())
    own = paired_comparison(t["nucleus_enrichment_other"], t["nucleus_enrichment"])
    return (f"{len(t)} | {t['pointing_game'].mean():.2f} | {t['energy_pointing_game'].mean():.2f} | "
            f"{t['relevance_mass_accuracy'].mean():.2f} | {t['relevance_rank_accuracy'].mean():.2f} | "
            f"{t['nucleus_enrichment'].median():.2f} | {t['nucleus_enrichment_other'].median():.2f} | "
            f"{own['b_greater']:.0%} | {own['p']:.2g} | {timing['seconds_per_cell']:.3f}")


def randomisation(args, name: str, method: str) -> str:
    t = pd.read_csv(args.out / name / "sanity" / "sanity.csv")
    t = t[t["method"] == method]
    steps = list(dict.fromkeys(t["step"]))  # 0 = trained, 1 = the classifier randomised, ..., last = all
    trained, first, last = (t[t["step"] == s] for s in (steps[0], steps[1], steps[-1]))
    return (f"{first['spearman'].mean():.2f} / {first['ssim'].mean():.2f} | {last['spearman'].mean():.2f} / "
            f"{last['ssim'].mean():.2f} | {trained['nucleus_enrichment'].median():.2f} | "
            f"{last['nucleus_enrichment'].median():.2f}")


def faithful(args, name: str, method: str) -> str:
    t = pd.read_csv(args.out / name / "faithfulness" / "faithfulness.csv")
    area = t[(t["method"] == method) & np.isfinite(t["area"])].groupby(["curve", "order"])["area"].mean()
    return " | ".join(f"{area[c, o]:.3f}" for c, o in (("deletion", "most relevant first"), ("deletion", "random"),
                                                         ("deletion", "nucleus first"),
                                                         ("insertion", "most relevant first"), ("insertion", "random")))


SECTIONS = (  # (title, what it says, columns after method and head, the row function)
    ("Localisation and the position control",
     "Means over cells (enrichment: medians). Own / other: nucleus enrichment on the cell's own mask and on another "
     "cell's of the same size class; p: paired Wilcoxon, own against other.",
     ("cells", "pointing game", "energy PG", "relevance mass", "relevance rank", "enrichment own", "other",
      "own > other", "p", "s per cell (quantify, 1 thread)"), localisation),
    ("Sanity: cascading randomisation (fold 0)",
     "Spearman / SSIM of |map| against the trained model's, after the classifier alone and after every stage is "
     "randomised; median enrichment trained and fully randomised.",
     ("after classifier", "all randomised", "enrichment trained", "all randomised"), randomisation),
    ("Faithfulness (fold 0)",
     "Mean area under the normalised output. Deletion: lower under most-relevant-first (MoRF) is more faithful; "
     "insertion: higher.",
     ("deletion MoRF", "random", "nucleus first", "insertion MoRF", "random"), faithful),
)


def report(args, runs: dict[str, Path]) -> str:
    lines = ["# Attribution methods x heads on the held-out real cells", "",
             f"Settings: IG / SmoothGrad {args.steps} steps, SmoothGrad / GradientShap {args.samples} samples, mean "
             f"baseline, fp32, target the predicted class; cells: a seeded sample of at most {args.limit} held-out "
             f"cells per fold (each cell explained by the fold model that did not train on it); sanity on "
             f"{args.sanity_limit} and faithfulness on {args.faith_limit} cells of fold 0. Runs: "
             + ", ".join(f"{n} = `{f}`" for n, f in runs.items())]
    for title, text, columns, row in SECTIONS:
        lines += ["", f"## {title}", "", text, "", "| method | head | " + " | ".join(columns) + " |",
                  "|---|---|" + "---:|" * len(columns)]
        lines += [f"| {m} | {n} | {row(args, n, m)} |" for m in args.methods for n in runs]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--runs", required=True, help="NAME=FOLDER,... (FOLDER holds fold0..fold<k-1>)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--limit", type=int, default=None, help="held-out cells per fold (seeded sample; default: all)")
    p.add_argument("--steps", type=int, default=32)
    p.add_argument("--samples", type=int, default=4)
    p.add_argument("--sanity-limit", type=int, default=4)
    p.add_argument("--faith-limit", type=int, default=8)
    p.add_argument("--workers", type=int, default=2)
    args = p.parse_args()
    args.methods = args.methods.split(",")
    runs = {n: Path(f) for n, f in (r.split("=", 1) for r in args.runs.split(","))}
    tasks = [(quantify_task, name, folder, m) for m in args.methods for name, folder in runs.items()]
    tasks += [(check_task, name, folder, c) for name, folder in runs.items() for c in ("sanity", "faithfulness")]
    with cf.ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        for done in cf.as_completed([pool.submit(t[0], args, *t[1:]) for t in tasks]):
            print(done.result(), flush=True)
    text = report(args, runs)
    (args.out / "method_study.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()

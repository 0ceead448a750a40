"""Where does each head's Integrated Gradients fall on the real cells? The study of docs/explainability.md.

For every configuration of a constraint sweep (`bench/constraint_sweep.py --out SWEEP`: SWEEP/<config>/
<head>/fold<k>) and every baseline, runs `quantify` on each fold run's own held-out fold (so each
cell is explained once per configuration, by the model that did not train on it; the per-fold
folders are reused on a rerun), pools the folds and writes OUT/study.md:

* per configuration (default baseline): per class and overall, the nucleus share of positive
  attribution, the nucleus area share, the enrichment and its control, the top-10% hit rate
  (mean ± sd, median [IQR]);
* does attribution sit on the nucleus more than its area, and more than the baseline alone puts
  there (paired Wilcoxon on the same cells), and do the share and the enrichment rise with severity (Spearman);
* each configuration against `cls` on the same cells (paired Wilcoxon), for every baseline;
* per baseline, OUT/study_<baseline>.png: per class, the share and the enrichment of every
  configuration beside the area share and the control (`figures.nucleus_study_png`).

    python bench/explain_study.py --sweep runs/sweep --out runs/explain [--baselines mean,white,blur]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from herlev_fa.atomic import write_text
from herlev_fa.config import IGSettings
from herlev_fa.explanation.report import quantify
from herlev_fa.explanation.study import compare_runs, paired_comparison, severity_trend
from herlev_fa.figures import nucleus_study_png
from herlev_fa.labels import short_name
from herlev_fa.runs import load_run

METRICS = {"nucleus_pos_share": "nucleus share of + attribution", "nucleus_enrichment": "nucleus enrichment",
           "nucleus_top10": "top-10% pixels in nucleus"}


def fold_tables(sweep: Path, config: str, out: Path, settings: IGSettings) -> pd.DataFrame | None:
    """quantify of every finished fold run of `config` on its own held-out fold, pooled (None: no finished fold)."""
    tables = []
    for run_dir in sorted(sweep.glob(f"{config}/*/fold*/herlev.json")):
        run_dir = run_dir.parent
        folder = out / config / run_dir.name / settings.baseline
        csv = folder / "quantify.csv"
        if not csv.is_file():
            started = time.time()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the delta is reported in the table instead
                quantify(load_run(run_dir), out=folder, settings=settings, progress=False)
            print(f"{config} {run_dir.name} {settings.baseline}: {time.time() - started:.0f} s", flush=True)
        table = pd.read_csv(csv)
        table["fold"] = run_dir.name
        tables.append(table)
    return pd.concat(tables, ignore_index=True) if tables else None


def cell(values: pd.Series) -> str:
    v = values.replace([np.inf, -np.inf], np.nan).dropna().to_numpy()
    if not len(v):
        return "-"
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}, {q50:.2f} [{q25:.2f}-{q75:.2f}]"


def per_class(table: pd.DataFrame, classes: list[str]) -> list[str]:
    lines = ["| class | n | nucleus share of + attr. | nucleus area share | enrichment | control (\\|x - x'\\| alone) "
             "| top-10% in nucleus |", "|---|---:|---|---|---|---|---|"]
    for name in [*classes, "all"]:
        part = table if name == "all" else table[table["label"] == name]
        if part.empty:
            continue
        lines.append(f"| {short_name(name) if name != 'all' else '**all**'} | {len(part)} | "
                     + " | ".join(cell(part[m]) for m in ("nucleus_pos_share", "nucleus_area_share",
                                                          "nucleus_enrichment", "nucleus_change_enrichment",
                                                          "nucleus_top10")) + " |")
    return lines


def p_text(p: float) -> str:
    return "-" if not np.isfinite(p) else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--configs", default="cls,reg,cls_reg-0.3,cls_reg-1")
    parser.add_argument("--baselines", default="mean,white,blur")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--bs", type=int, default=16)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()

    configs, baselines = args.configs.split(","), args.baselines.split(",")
    pooled: dict[tuple[str, str], pd.DataFrame] = {}
    for baseline in baselines:  # the default baseline first: its tables are the main result
        settings = IGSettings(steps=args.steps, baseline=baseline, bs=args.bs, device=args.device)
        for config in configs:
            table = fold_tables(args.sweep, config, args.out, settings)
            if table is not None:
                pooled[(config, baseline)] = table
    if not pooled:
        raise SystemExit(f"no finished fold run under {args.sweep}")
    task = load_run(next(args.sweep.glob("*/*/fold*/herlev.json")).parent).task
    classes, severity_of = list(task.classes), dict(zip(task.classes, task.severities))

    lines = [f"# IG on the real cells: {args.steps} steps, {', '.join(baselines)} baselines", ""]
    folds = {k: sorted(t["fold"].unique()) for k, t in pooled.items()}
    lines += ["Folds explained (each on its own held-out cells): "
              + "; ".join(f"{c} / {b}: {', '.join(f)} ({len(pooled[(c, b)])} cells)" for (c, b), f in folds.items()), ""]
    for (config, baseline), table in pooled.items():
        lines += [f"## {config}, baseline {baseline}", "", "mean ± sd, median [IQR]", "", *per_class(table, classes), ""]
    lines += ["## Nucleus against its area and against the baseline alone; trend with severity", "",
              "| config | baseline | n | + share > area share (cells) | p | enrichment > control (cells) | p "
              "| Spearman rho (share, severity) | p | Spearman rho (enrichment, severity) | p | mean \\|delta\\| "
              "| median relative delta |",
              "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for (config, baseline), t in pooled.items():
        area = paired_comparison(t["nucleus_area_share"], t["nucleus_pos_share"])
        control = paired_comparison(t["nucleus_change_enrichment"], t["nucleus_enrichment"])
        severity = t["label"].map(severity_of)
        trends = [severity_trend(t[m], severity) for m in ("nucleus_pos_share", "nucleus_enrichment")]
        lines.append(f"| {config} | {baseline} | {int(area['n'])} | {area['b_greater']:.0%} | {p_text(area['p'])} | "
                     f"{control['b_greater']:.0%} | {p_text(control['p'])} | "
                     + " | ".join(f"{trend['rho']:+.2f} | {p_text(trend['p'])}" for trend in trends)
                     + f" | {t['delta'].abs().mean():.3g} | {t['relative_delta'].median():.2%} |")
    lines += ["", "## Each head against cls on the same cells (paired Wilcoxon; b = the head, a = cls)", "",
              "| baseline | head | metric | n | cls median | head median | median diff [IQR] | head higher | p |",
              "|---|---|---|---:|---:|---:|---|---:|---:|"]
    for baseline in baselines:
        tables = {c: pooled[(c, baseline)] for c in configs if (c, baseline) in pooled}
        if "cls" not in tables or len(tables) < 2:
            continue
        for r in compare_runs(tables, "cls", list(METRICS)).itertuples(index=False):
            lines.append(f"| {baseline} | {r.name} | {METRICS[r.metric]} | {int(r.n)} | {r.median_a:.3f} | "
                         f"{r.median_b:.3f} | {r.median_diff:+.3f} [{r.diff_q25:+.3f}, {r.diff_q75:+.3f}] | "
                         f"{r.b_greater:.0%} | {p_text(r.p)} |")
    for baseline in baselines:  # the poster's Fig. 8: every configuration on the same cells, per class
        tables = {c: pooled[(c, baseline)] for c in configs if (c, baseline) in pooled}
        nucleus_study_png(tables, classes, args.out / f"study_{baseline}.png",
                          title=f"IG on the held-out real cells, baseline {baseline}, {args.steps} steps")
    text = "\n".join(lines) + "\n"
    write_text(args.out / "study.md", text)
    print(text)


if __name__ == "__main__":
    main()

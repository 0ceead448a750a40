"""Where does each head's Integrated Gradients fall on the real cells? The study of docs/explainability.md.

For every configuration of a constraint sweep (`bench/constraint_sweep.py --out SWEEP`: SWEEP/<config>/
<head>/fold<k>) and every baseline, runs `quantify` on each fold run's own held-out fold (so each
cell is explained once per configuration, by the model that did not train on it; finished folds
in OUT/<config>/<baseline>/<fold>/ are reused on a rerun), pools the folds and writes OUT/study.md,
per baseline (`herlev_fa.explanation.study.study_markdown`, what `herlev compare-quantify` writes
for one baseline):

* per configuration: per class and overall, the nucleus share of positive attribution, the
  nucleus area share, the enrichment and its control, the top-10% hit rate (mean ± sd, median [IQR]);
* does attribution sit on the nucleus more than its area, and more than the baseline alone puts
  there (paired Wilcoxon on the same cells), and do the share and the enrichment rise with severity (Spearman);
* each configuration against `cls` on the same cells (paired Wilcoxon);
* OUT/study_<baseline>.png: per class, the share and the enrichment of every configuration beside
  the area share and the control (`figures.nucleus_study`, the poster's Fig. 8).

    python bench/explain_study.py --sweep runs/sweep --out runs/explain [--baselines mean,white,blur]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from herlev_fa.atomic import write_text
from herlev_fa.config import IGSettings
from herlev_fa.explanation.study import held_out_quantify, study_markdown
from herlev_fa.figures import nucleus_study_png
from herlev_fa.runs import run_task


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

    heads = {c: sorted({p.parent.parent for p in args.sweep.glob(f"{c}/*/fold*/herlev.json")})
             for c in args.configs.split(",")}  # config -> [SWEEP/<config>/<head>] with finished folds
    heads = {c: h[0] for c, h in heads.items() if h}
    if not heads:
        raise SystemExit(f"no finished fold run under {args.sweep}/<config>/<head>/fold<k>/")
    task = run_task(next(heads[next(iter(heads))].glob("fold*/herlev.json")).parent)
    lines = [f"# IG on the real cells: {args.steps} steps, {args.baselines.replace(',', ', ')} baselines", ""]
    for baseline in args.baselines.split(","):  # the default baseline first: its tables are the main result
        settings = IGSettings(steps=args.steps, baseline=baseline, bs=args.bs, device=args.device)
        started = time.time()
        tables = {c: held_out_quantify(run, args.out / c / baseline, settings, reuse=True,
                                       log=lambda line: print(line, flush=True)) for c, run in heads.items()}
        print(f"baseline {baseline}: {time.time() - started:.0f} s", flush=True)
        folds = "; ".join(f"{c}: {', '.join(sorted(t['fold'].unique()))} ({len(t)} cells)" for c, t in tables.items())
        lines += [f"## Baseline {baseline}", "", f"Folds explained, each on its own held-out cells: {folds}", "",
                  study_markdown(tables, task.classes, task.severities, reference="cls" if "cls" in tables else None)]
        nucleus_study_png(tables, task.classes, args.out / f"study_{baseline}.png",
                          title=f"IG on the held-out real cells, baseline {baseline}, {args.steps} steps")
    text = "\n".join(lines)
    write_text(args.out / "study.md", text)
    print(text)


if __name__ == "__main__":
    main()

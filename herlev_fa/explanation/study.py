"""Comparing explanations across runs on the same cells: paired tests, severity trends, the poster's Fig. 8.

What this is: functions on arrays and `quantify` tables (one row per cell) that answer the
questions of docs/explainability.md's real-cell study: does attribution sit on the nucleus more
than its area and more than the baseline alone puts there (`paired_comparison` of a cell's
share against its area share, or of its enrichment against its control), does it rise with
severity (`severity_trend`), and does one head differ from another on the same cells
(`compare_runs`, pairing rows by image path); `held_out_quantify` pools a cross-validated run's
folds, each on its own held-out cells, and `compare_quantify` (`herlev compare-quantify`)
writes the whole comparison of several runs: `study.md` and the Fig. 8 figure.

What it is not: computing attributions or shares (``explanation.report.quantify`` does).
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from herlev_fa.atomic import write_text
from herlev_fa.config import IGSettings
from herlev_fa.errors import HerlevError
from herlev_fa.labels import short_name

# the per-cell numbers compared between runs, and their names in tables
METRICS = {"nucleus_pos_share": "nucleus share of + attribution", "nucleus_enrichment": "nucleus enrichment",
           "nucleus_top10": "top-10% pixels in nucleus"}
# the localisation metrics of `overlap.LOCALISATION_METRICS`, by their short names in tables
LOCALISATION = {"pointing_game": "pointing game", "energy_pointing_game": "energy pointing game",
                "relevance_mass_accuracy": "relevance mass acc.", "relevance_rank_accuracy": "relevance rank acc."}


N_BOOT = 1000  # resamples of the cells for the 95% intervals of the effect sizes (seeded: same cells, same interval)


def rank_biserial(diff: np.ndarray) -> np.ndarray:
    """Matched-pairs rank-biserial correlation of paired differences [..., n]: (W+ - W-) / (W+ + W-), in [-1, 1].

    The effect size of the Wilcoxon signed-rank test (Kerby 2014): +1 when every pair has b > a,
    0 when the ranks balance. Zero differences are left out, as the test leaves them; NaN when
    every difference is zero. A leading batch axis (bootstrap resamples) is computed at once.
    """
    from scipy.stats import rankdata

    d = np.asarray(diff, np.float64)
    zero = d == 0
    magnitude = np.where(zero, -1.0, np.abs(d))  # zeros rank first ...
    ranks = rankdata(magnitude, axis=-1) - zero.sum(axis=-1, keepdims=True)  # ... and are taken off the others' ranks
    ranks = np.where(zero, 0.0, ranks)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (ranks * np.sign(d)).sum(axis=-1) / ranks.sum(axis=-1)


def effect_intervals(diff: np.ndarray, n_boot: int = N_BOOT, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Percentile bootstrap intervals (pairs resampled) of the median difference and of the rank-biserial r of diff [n].

    Returns:
        median_diff_low, median_diff_high, r_low, r_high (NaN for fewer than two pairs).
    """
    diff = np.asarray(diff, np.float64)
    if len(diff) < 2:
        return dict.fromkeys(("median_diff_low", "median_diff_high", "r_low", "r_high"), math.nan)
    rng = np.random.default_rng(seed)
    resampled = diff[rng.integers(0, len(diff), (n_boot, len(diff)))]  # [B, n]
    tail = 100 * (1 - level) / 2
    med_low, med_high = np.percentile(np.median(resampled, axis=1), [tail, 100 - tail])
    r = rank_biserial(resampled)  # [B]; NaN where a resample has only zero differences
    r_low, r_high = np.nanpercentile(r, [tail, 100 - tail]) if np.isfinite(r).any() else (math.nan, math.nan)
    return {"median_diff_low": float(med_low), "median_diff_high": float(med_high),
            "r_low": float(r_low), "r_high": float(r_high)}


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """b against a on the same cells: differences b - a [N], the Wilcoxon signed-rank test and its effect size.

    Pairs with a NaN on either side are left out. The test is scipy's two-sided
    `wilcoxon` (exact for small samples without ties or zeros, normal approximation otherwise);
    its p is NaN when no pair differs. A small p says only that the difference is not zero: read
    it with the effect size r and the interval of the median difference, which say how large it is.

    Returns:
        n, mean_a, mean_b, median_a, median_b, mean_diff, median_diff, diff_q25, diff_q75 (of b - a),
        b_greater (fraction of pairs with b > a), statistic, p, r (`rank_biserial`), and the 95%
        bootstrap intervals median_diff_low/high and r_low/high (`effect_intervals`).
    """
    from scipy.stats import wilcoxon

    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"a {a.shape} and b {b.shape} must be paired 1-D arrays")
    both = np.isfinite(a) & np.isfinite(b)
    a, b = a[both], b[both]
    diff = b - a  # [n]
    out = {"n": float(len(diff))}
    if not len(diff):
        return {**out, **{k: math.nan for k in ("mean_a", "mean_b", "median_a", "median_b", "mean_diff", "median_diff",
                                                 "diff_q25", "diff_q75", "b_greater", "statistic", "p", "r",
                                                 "median_diff_low", "median_diff_high", "r_low", "r_high")}}
    q25, q75 = np.percentile(diff, [25, 75])
    out.update(mean_a=a.mean(), mean_b=b.mean(), median_a=float(np.median(a)), median_b=float(np.median(b)),
               mean_diff=diff.mean(), median_diff=float(np.median(diff)), diff_q25=q25, diff_q75=q75,
               b_greater=float((diff > 0).mean()), r=float(rank_biserial(diff)), **effect_intervals(diff))
    if np.all(diff == 0):
        out.update(statistic=math.nan, p=math.nan)
    else:
        test = wilcoxon(b, a, alternative="two-sided")
        out.update(statistic=float(test.statistic), p=float(test.pvalue))
    return {k: float(v) for k, v in out.items()}


def severity_trend(values: Sequence[float], severity: Sequence[float]) -> dict[str, float]:
    """Spearman's rank correlation of `values` [N] with the true `severity` [N] (NaN values left out).

    Returns:
        rho, p, n, and rho_low, rho_high: its 95% interval by Fisher's z with the Fieller-Hartley-Pearson
        standard error 1.06 / sqrt(n - 3) (NaN for n < 5).
    """
    from scipy.stats import norm, spearmanr

    v, s = np.asarray(values, np.float64), np.asarray(severity, np.float64)
    keep = np.isfinite(v) & np.isfinite(s)
    n = int(keep.sum())
    if n < 3 or np.unique(s[keep]).size < 2:
        return {"rho": math.nan, "p": math.nan, "n": float(n), "rho_low": math.nan, "rho_high": math.nan}
    result = spearmanr(v[keep], s[keep])
    rho = float(result.statistic)
    low = high = math.nan
    if n >= 5 and abs(rho) < 1:
        z, half = math.atanh(rho), norm.ppf(0.975) * 1.06 / math.sqrt(n - 3)
        low, high = math.tanh(z - half), math.tanh(z + half)
    elif n >= 5:
        low = high = rho
    return {"rho": rho, "p": float(result.pvalue), "n": float(n), "rho_low": low, "rho_high": high}


def compare_runs(tables: Mapping[str, pd.DataFrame], reference: str, metrics: Sequence[str]) -> pd.DataFrame:
    """Each table against `reference` on the cells both explained (paired by `path`), per metric.

    Args:
        tables: name -> a quantify table (one row per cell; columns `path` and the metrics),
            e.g. the pooled held-out folds of each head.
        reference: the name the others are compared with (a = reference, b = the other).

    Returns:
        One row per (name, metric): the `paired_comparison` columns.
    """
    if reference not in tables:
        raise KeyError(f"reference '{reference}' is not among {list(tables)}")
    rows = []
    for name, table in tables.items():
        if name == reference:
            continue
        both = tables[reference].merge(table, on="path", suffixes=("_a", "_b"))
        for metric in metrics:
            rows.append({"name": name, "metric": metric,
                         **paired_comparison(both[f"{metric}_a"].to_numpy(), both[f"{metric}_b"].to_numpy())})
    return pd.DataFrame(rows)


# ---------------------------------------------------------------------------------------------
# Several runs on the same held-out cells: quantify pooled over folds, the report, Fig. 8


def fold_runs(run_dir: str | Path) -> list[Path]:
    """The fold runs of a run folder: the folder itself when it is one (herlev.json), else its fold<k>/ runs
    (`ensemble.fold_folders`, by fold number)."""
    from herlev_fa.ensemble import fold_folders

    run_dir = Path(run_dir)
    if (run_dir / "herlev.json").is_file():
        return [run_dir]
    folds = [f for f in fold_folders(run_dir) if (f / "herlev.json").is_file()]
    if not folds:
        raise HerlevError(f"'{run_dir}' is not a run folder (no herlev.json) and holds no finished fold*/ run")
    return folds


def held_out_quantify(run_dir: str | Path, out: str | Path, settings: IGSettings = IGSettings(),
                      data: str | Path | None = None, reuse: bool = False,
                      log: Callable[[str], None] | None = None, progress: bool = False,
                      limit: int | None = None) -> pd.DataFrame:
    """`quantify` of each fold run of `run_dir` on its own held-out fold, pooled: every cell once, by a model
    that did not train on it (or, with `limit`, a seeded sample of at most `limit` cells of each fold).

    Each fold's files go to OUT/<fold>/ (quantify.csv, .md, .png). With `reuse`, a fold whose
    quantify.csv is already there is read instead (made with the same settings: the caller's
    promise). The per-fold warnings about the delta are left to the caller, who has the pooled
    `relative_delta`. `log` gets a line per fold quantified; `progress` shows quantify's bar.

    Returns:
        The pooled rows (one per held-out cell), with a `fold` column (the fold run's folder name).
    """
    from herlev_fa.explanation.report import quantify
    from herlev_fa.runs import load_run

    tables = []
    for fold_dir in fold_runs(run_dir):
        folder = Path(out) / fold_dir.name
        csv = folder / "quantify.csv"
        if not (reuse and csv.is_file()):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # unconverged images: reported on the pooled table
                quantify(load_run(fold_dir), data=data, out=folder, settings=settings, progress=progress, limit=limit)
            if log is not None:
                log(f"{fold_dir}: quantified on its held-out cells")
        table = pd.read_csv(csv)
        table["fold"] = fold_dir.name
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def _cell(values: pd.Series) -> str:
    """'mean ± sd, median [q25-q75]' of the finite values."""
    v = values.replace([np.inf, -np.inf], np.nan).dropna().to_numpy()
    if not len(v):
        return "-"
    q25, q50, q75 = np.percentile(v, [25, 50, 75])
    return f"{v.mean():.2f} ± {v.std(ddof=1) if len(v) > 1 else 0:.2f}, {q50:.2f} [{q25:.2f}-{q75:.2f}]"


def _p(p: float) -> str:
    return "-" if not np.isfinite(p) else (f"{p:.1e}" if p < 1e-3 else f"{p:.3f}")


def _effect(value: float, low: float, high: float) -> str:
    """'+0.42 [+0.30, +0.53]': an effect size beside its 95% interval."""
    if not np.isfinite(value):
        return "-"
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}]" if np.isfinite(low) else f"{value:+.2f}"


def study_markdown(tables: Mapping[str, pd.DataFrame], classes: Sequence[str], severities: Sequence[float],
                   reference: str | None = None) -> str:
    """The comparison of several runs' pooled `quantify` tables (run name -> rows), as markdown sections.

    Per run, per class and overall: the nucleus share of positive attribution, the nucleus area
    share, the enrichment, its two controls (|x - x'| alone; another cell's nucleus mask) and the
    top-10% hit rate (mean ± sd, median [IQR]). Then per run: share > area share, enrichment >
    control and enrichment on the own nucleus > on another cell's (paired Wilcoxon, with the
    rank-biserial r and its 95% interval), Spearman's rho of the share and of the enrichment with
    the true severity (with its interval), the delta; the localisation metrics (mean, per run).
    Then each run against `reference` (default: the first) on the cells both explained
    (`compare_runs`), with r and the median difference's interval. Tables without the method column
    or the newer metrics (written before they existed) get '-' there.
    """
    severity_of = dict(zip(classes, severities))
    columns = ("nucleus_pos_share", "nucleus_area_share", "nucleus_enrichment", "nucleus_change_enrichment",
               "nucleus_enrichment_other", "nucleus_top10")
    lines = []
    for name, table in tables.items():
        method = ", ".join(sorted(set(table["method"]))) if "method" in table else "-"
        lines += [f"### {name}", "", f"method {method}; mean ± sd, median [IQR]", "",
                  "| class | n | nucleus share of + attr. | nucleus area share | enrichment "
                  "| control (\\|x - x'\\| alone) "
                  "| enrichment on another cell's nucleus | top-10% in nucleus |", "|---|---:|---|---|---|---|---|---|"]
        for group in [c for c in classes if (table["label"] == c).any()] + ["all"]:
            part = table if group == "all" else table[table["label"] == group]
            label = "**all**" if group == "all" else short_name(group)
            lines.append(f"| {label} | {len(part)} | "
                         + " | ".join(_cell(part[m]) if m in part else "-" for m in columns) + " |")
        lines.append("")
    lines += ["### Nucleus against its area, the baseline alone and another cell's nucleus; trend with severity", "",
              "r: rank-biserial effect size of the paired test, in [-1, 1]; "
              "[95% CI] (bootstrap for r, Fisher z for rho)",
              "",
              "| run | n | + share > area share (cells) | p | r [95% CI] "
              "| enrichment > control (cells) | p | r [95% CI] "
              "| own nucleus > other cell's (cells) | median own − other | p "
              "| Spearman rho (share, severity) [95% CI] | p | Spearman rho (enrichment, severity) [95% CI] | p "
              "| mean \\|delta\\| | median relative delta |",
              "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t in tables.items():
        area = paired_comparison(t["nucleus_area_share"], t["nucleus_pos_share"])
        control = paired_comparison(t["nucleus_change_enrichment"], t["nucleus_enrichment"])
        other = paired_comparison(t["nucleus_enrichment_other"], t["nucleus_enrichment"]) \
            if "nucleus_enrichment_other" in t else None
        own = (f"{other['b_greater']:.0%} | {other['median_diff']:+.2f} | {_p(other['p'])}" if other and other["n"]
               else "- | - | -")
        severity = t["label"].map(severity_of)
        trends = [severity_trend(t[m], severity) for m in ("nucleus_pos_share", "nucleus_enrichment")]
        delta = f"{t['delta'].abs().mean():.3g} | {t['relative_delta'].median():.2%}" \
            if np.isfinite(t["delta"]).any() else "- | -"
        lines.append(f"| {name} | {int(area['n'])} | {area['b_greater']:.0%} | {_p(area['p'])} | "
                     f"{_effect(area['r'], area['r_low'], area['r_high'])} | "
                     f"{control['b_greater']:.0%} | {_p(control['p'])} | "
                     f"{_effect(control['r'], control['r_low'], control['r_high'])} | {own} | "
                     + " | ".join(f"{_effect(trend['rho'], trend['rho_low'], trend['rho_high'])} | {_p(trend['p'])}"
                                  for trend in trends)
                     + f" | {delta} |")
    if any(m in t for t in tables.values() for m in LOCALISATION):
        lines += ["", "### Localisation against the nucleus mask (mean over cells; chance: the nucleus area share)", "",
                  "| run | n | " + " | ".join(LOCALISATION.values()) + " | nucleus area share |",
                  "|---|---:|" + "---:|" * (len(LOCALISATION) + 1)]
        for name, t in tables.items():
            cells = [f"{t[m].mean():.3f}" if m in t else "-" for m in (*LOCALISATION, "nucleus_area_share")]
            lines.append(f"| {name} | {len(t)} | " + " | ".join(cells) + " |")
    reference = reference or next(iter(tables))
    if len(tables) > 1:
        lines += ["", f"### Each run against {reference} on the same cells (paired Wilcoxon; a = {reference})", "",
                  f"| run | metric | n | {reference} median | run median | median diff [IQR] | median diff 95% CI "
                  "| run higher | r [95% CI] | p |",
                  "|---|---|---:|---:|---:|---|---|---:|---:|---:|"]
        for r in compare_runs(tables, reference, list(METRICS)).itertuples(index=False):
            lines.append(f"| {r.name} | {METRICS[r.metric]} | {int(r.n)} | {r.median_a:.3f} | {r.median_b:.3f} | "
                         f"{r.median_diff:+.3f} [{r.diff_q25:+.3f}, {r.diff_q75:+.3f}] | "
                         f"[{r.median_diff_low:+.3f}, {r.median_diff_high:+.3f}] | {r.b_greater:.0%} | "
                         f"{_effect(r.r, r.r_low, r.r_high)} | {_p(r.p)} |")
    return "\n".join(lines) + "\n"


def _warn_learned_nothing(labels: Sequence[str], folds: Sequence[Sequence[Path]], classes: Sequence[str]) -> None:
    """Warn about fold models whose held-out metrics (metrics.json) show they learned nothing: explaining them
    explains no learned evidence, and a tiny p between two such models means nothing."""
    import json

    from herlev_fa.metrics import learned_nothing

    for label, fold_dirs in zip(labels, folds):
        for fold_dir in fold_dirs:
            try:
                metrics = json.loads((fold_dir / "metrics.json").read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            problem = learned_nothing(metrics, classes)
            if problem:
                warnings.warn(f"{label} ({fold_dir.name}): the model {problem} on its held-out fold; its explanations "
                              "show no learned evidence", stacklevel=3)


@dataclass
class StudyResult:
    """What `compare_quantify` wrote and found."""

    tables: dict[str, pd.DataFrame]  # run label -> pooled quantify rows (one per held-out cell)
    versus: pd.DataFrame  # each run against the first on the same cells (`compare_runs` rows)
    report: Path  # study.md
    figure: Path  # study.png, the poster's Fig. 8


def compare_quantify(runs: Sequence[str | Path], out: str | Path, labels: Sequence[str] | None = None,
                     data: str | Path | None = None, settings: IGSettings = IGSettings(),
                     log: Callable[[str], None] | None = None, progress: bool = False) -> StudyResult:
    """The poster's Fig. 8 for several runs: where each run's IG falls on the same held-out cells, compared.

    Each run (a fold run, or a cross-validated run folder: each fold on its own held-out cells)
    is quantified into OUT/<label>/ (characters other than letters, digits and . = + - made _);
    then OUT/study.md (`study_markdown`) and OUT/study.png (`figures.nucleus_study`) compare
    them, every run against the first.

    Raises:
        HerlevError: no run, a folder that is no run, labels that do not match, runs of other tasks,
            no cell explained by every run, or any `quantify` error.
    """
    from herlev_fa.explanation.report import precisions_used, short_labels
    from herlev_fa.figures import nucleus_study_png
    from herlev_fa.runs import run_task

    if not runs:
        raise HerlevError("no run given: pass one or more run folders")
    folds = [fold_runs(r) for r in runs]  # checks every folder before any work
    labels = list(labels) if labels else short_labels([Path(r) for r in runs])
    if len(labels) != len(runs) or len(set(labels)) != len(labels):
        raise HerlevError(f"{len(labels)} label(s) for {len(runs)} run(s): give one distinct --label per run, or none")
    task = run_task(folds[0][0])  # the sidecar only: each fold's model is loaded once, by quantify
    _warn_learned_nothing(labels, folds, task.classes)
    if any(run_task(f[0]).classes != task.classes for f in folds[1:]):
        raise HerlevError("the runs have different classes; compare runs of the same task")
    folders = [re.sub(r"[^\w.=+-]+", "_", label).strip("._") or "run" for label in labels]  # never outside `out`
    if len(set(folders)) != len(folders):
        raise HerlevError(f"the labels {labels} name the same folder; give distinct --label names")
    out = Path(out)
    tables = {label: held_out_quantify(r, out / folder, settings, data=data, log=log, progress=progress)
              for label, folder, r in zip(labels, folders, runs)}
    common = set.intersection(*(set(t["path"]) for t in tables.values()))
    if not common:
        raise HerlevError("the runs explained no common cell: compare runs of the same data and folds")
    described = settings.describe(precisions_used(pd.concat(tables.values())["precision"]))
    report = out / "study.md"
    method = "IG" if settings.method == "ig" else settings.method
    write_text(report, f"# Where {method} falls on the held-out cells: {', '.join(labels)}\n\n{described}; "
               f"{len(common)} cells explained by every run\n\n"
               + study_markdown(tables, task.classes, task.severities))
    figure = nucleus_study_png(tables, task.classes, out / "study.png",
                               title=f"{method} on held-out cells, {described}")
    versus = compare_runs(tables, labels[0], list(METRICS)) if len(tables) > 1 else pd.DataFrame()
    return StudyResult(tables, versus, report, figure)

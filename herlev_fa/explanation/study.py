"""Comparing explanations across runs on the same cells: paired tests, severity trends, pooled tables.

What this is: pure functions on arrays and `quantify` tables (one row per cell) that answer the
questions of docs/explainability.md's real-cell study: does attribution sit on the nucleus more
than its area and more than the baseline alone puts there (`paired_comparison` of a cell's
share against its area share, or of its enrichment against its control), does it rise with
severity (`severity_trend`), and does one head differ from another on the same cells
(`compare_runs`, pairing rows by image path).

What it is not: computing attributions or shares (``explanation.report.quantify`` does).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd


def paired_comparison(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """b against a on the same cells: differences b - a [N] and the Wilcoxon signed-rank test.

    Pairs with a NaN on either side are left out. The test is scipy's two-sided
    `wilcoxon` (exact for small samples without ties or zeros, normal approximation otherwise);
    its p is NaN when no pair differs.

    Returns:
        n, mean_a, mean_b, median_a, median_b, mean_diff, median_diff, diff_q25, diff_q75 (of b - a),
        b_greater (fraction of pairs with b > a), statistic, p.
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
                                                 "diff_q25", "diff_q75", "b_greater", "statistic", "p")}}
    q25, q75 = np.percentile(diff, [25, 75])
    out.update(mean_a=a.mean(), mean_b=b.mean(), median_a=float(np.median(a)), median_b=float(np.median(b)),
               mean_diff=diff.mean(), median_diff=float(np.median(diff)), diff_q25=q25, diff_q75=q75,
               b_greater=float((diff > 0).mean()))
    if np.all(diff == 0):
        out.update(statistic=math.nan, p=math.nan)
    else:
        test = wilcoxon(b, a, alternative="two-sided")
        out.update(statistic=float(test.statistic), p=float(test.pvalue))
    return {k: float(v) for k, v in out.items()}


def severity_trend(values: Sequence[float], severity: Sequence[float]) -> dict[str, float]:
    """Spearman's rank correlation of `values` [N] with the true `severity` [N] (NaN values left out): rho, p, n."""
    from scipy.stats import spearmanr

    v, s = np.asarray(values, np.float64), np.asarray(severity, np.float64)
    keep = np.isfinite(v) & np.isfinite(s)
    if keep.sum() < 3 or np.unique(s[keep]).size < 2:
        return {"rho": math.nan, "p": math.nan, "n": float(keep.sum())}
    result = spearmanr(v[keep], s[keep])
    return {"rho": float(result.statistic), "p": float(result.pvalue), "n": float(keep.sum())}


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

"""Metrics of a severity classifier: pure functions on arrays (their fastai wrappers: `training.learner`).

All take the raw model output `out` [N, C] (see ``herlev_fa.model.heads``) and the true class
indices `y` [N]. Binary (normal vs abnormal) metrics use the task's severities: a class is
abnormal when its severity is above 0. AUC-ROC of abnormal vs normal scores P(abnormal) (sum of
the abnormal classes' probabilities) for class heads, and the severity score for `reg`.

What a cytologist asks beyond accuracy:

- big mistakes: the share of cells predicted two or more severity levels from the truth, and
  the counts of the worst confusions (normal <-> carcinoma in situ, normal <-> severe), both
  directions;
- the screening call, normal vs abnormal: a cell is called abnormal when its abnormal score
  reaches a threshold (`screening_decision`: P(abnormal) >= 0.5 by default, never the top class,
  which four abnormal classes splitting 78% can lose to one normal class at 22%); its accuracy,
  sensitivity and specificity, then sensitivity at 95% specificity and specificity at 95%
  sensitivity (read off scikit-learn's ROC curve of the abnormal score) with the thresholds that
  reach them (`operating_thresholds`, which `--threshold spec95|sens95` reads back);
- the poster's binary accuracy stays as it was defined there: the predicted class mapped to
  normal / abnormal (`binary_accuracy`), beside the screening call's (`screening_accuracy`);
- calibration: expected calibration error of the top class probability (class heads only);
- 95% bootstrap intervals of every scalar metric (cells resampled, seeded).

scikit-learn is imported by the functions that score against true labels only, so that decoding
and the screening call (all that `herlev predict` needs) load without it.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from herlev_fa.errors import SettingError
from herlev_fa.model.heads import Head

# Every scalar metric, in table order: metrics.json, the CLI tables, cv_summary.md and the
# reproduce table all read this one list.
SCALAR_METRICS = ("accuracy", "binary_accuracy", "auc", "mse", "kappa", "big_mistakes", "normal_cis", "normal_severe",
                  "screening_accuracy", "sensitivity", "specificity", "sens_at_spec95", "spec_at_sens95", "ece")
# the subset computed every epoch during training (the epoch table and log.csv)
EPOCH_METRICS = ("accuracy", "binary_accuracy", "auc", "mse", "kappa")
TARGET_RATE = 0.95  # the screening operating points: sensitivity at 95% specificity and the reverse
THRESHOLD = 0.5  # the default screening call: abnormal when P(abnormal) (the severity score for `reg`) >= 0.5
OPERATING_POINTS = ("spec95", "sens95")  # named thresholds recorded by every evaluation (`operating_thresholds`)
N_BINS = 10  # confidence bins of the calibration error and the reliability diagram


def decode(out: np.ndarray, head: Head,
           severities: Sequence[float]) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Raw output [N, C] -> (probabilities [N, K] or None for `reg`, score [N], predicted class [N])."""
    probs, score, pred = head.decode(torch.as_tensor(out, dtype=torch.float32), severities)
    return None if probs is None else probs.numpy(), score.numpy(), pred.numpy()


def abnormal_score(probs: np.ndarray | None, score: np.ndarray, severities: Sequence[float]) -> np.ndarray:
    """The score ranking cells as abnormal [N]: P(abnormal) for class heads (probs [N, K]),
    the severity score for `reg`."""
    if probs is None:
        return np.asarray(score)
    return probs[:, np.asarray(severities) > 0].sum(axis=1)


def screening_decision(abnormal_score: np.ndarray, threshold: float = THRESHOLD) -> np.ndarray:
    """The screening call [N] (bool): abnormal when the abnormal score [N] reaches `threshold`.

    The one rule behind every normal / abnormal decision the tool reports (predict's `abnormal`,
    sensitivity, specificity, screening accuracy), for every head: the score is P(abnormal) for
    heads with class probabilities, the severity score for `reg`.
    """
    return np.asarray(abnormal_score, dtype=np.float64) >= threshold


def operating_thresholds(is_abnormal: np.ndarray, abnormal_score: np.ndarray,
                         target: float = TARGET_RATE) -> dict[str, float]:
    """The thresholds of the screening operating points: `spec95` (highest sensitivity with specificity >= target)
    and `sens95` (highest specificity with sensitivity >= target); NaN unless both groups are present.

    `screening_decision(score, t)` with these thresholds reaches `sens_at_spec95` and
    `spec_at_sens95` of `operating_points` on the same cells [N]. `spec95` is +inf when no
    threshold below the top score keeps the specificity (nothing is then called abnormal).
    """
    truth = np.asarray(is_abnormal, bool)
    if truth.all() or not truth.any():
        return dict.fromkeys(OPERATING_POINTS, math.nan)
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(truth, abnormal_score, drop_intermediate=False)
    eps = 1e-12
    spec_ok = np.flatnonzero(fpr <= 1 - target + eps)  # fpr non-decreasing: the last one has the highest tpr
    sens_ok = np.flatnonzero(tpr >= target - eps)  # the first one has the lowest fpr
    return {"spec95": float(thresholds[spec_ok[-1]]), "sens95": float(thresholds[sens_ok[0]])}


def threshold_value(value: float | str | None, recorded: dict | None = None, source: str = "the run") -> float:
    """A screening threshold as the user gives it: a number, or an operating point (`spec95`, `sens95`).

    Args:
        value: a number (as text or float), an operating point name, or None (the default, 0.5).
        recorded: the evaluation metrics that hold `operating_thresholds` (a run's metrics.json).
        source: what `recorded` came from, for the error message.

    Raises:
        HerlevError: not a number nor an operating point, or an operating point `recorded` lacks.
    """
    if value is None:
        return THRESHOLD
    if isinstance(value, str) and value.strip().lower() in OPERATING_POINTS:
        name = value.strip().lower()
        found = (recorded or {}).get("operating_thresholds", {}).get(name)
        if found is None or not isinstance(found, (int, float)) or math.isnan(found):
            raise SettingError(f"{{threshold}} {name}: {source} has no recorded {name} operating point (evaluate it on "
                              "cells with normal and abnormal ones first: herlev evaluate), or pass a number")
        return float(found)
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SettingError(f"{{threshold}} {{value}} is not a number nor one of {', '.join(OPERATING_POINTS)}",
                           str(value)) from None
    if not math.isfinite(number):
        raise SettingError("{threshold} {value} is not a finite number", number)
    return number


def binary_auc(is_abnormal: np.ndarray, abnormal_score: np.ndarray) -> float:
    """AUC-ROC of abnormal vs normal; NaN when only one of the two is present."""
    if len(np.unique(is_abnormal)) < 2:
        return math.nan
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(is_abnormal, abnormal_score))


BY_DESIGN = ("ece", "normal_cis", "normal_severe")  # NaN for heads without probabilities, tasks without those classes


def learned_nothing(metrics: dict, classes: Sequence[str]) -> str | None:
    """Why these predictions carry no information about the class, or None: the model predicts one class for every
    cell, or its classes agree with the truth no better than chance (quadratic kappa <= 0), or its abnormal score
    ranks abnormal cells no better than chance (AUC <= 0.5).

    Reads `severity_metrics(..., full=True)` (or a metrics.json): confusion_matrix, kappa, auc.
    """
    cm = np.asarray(metrics.get("confusion_matrix") or [[]], dtype=np.int64)  # [K, K] rows true, columns predicted
    n = int(cm.sum())
    predicted = np.flatnonzero(cm.sum(axis=0)) if cm.size else np.array([], int)
    present = np.flatnonzero(cm.sum(axis=1)) if cm.size else np.array([], int)
    if len(present) > 1 and len(predicted) == 1:
        return (f"predicts '{classes[int(predicted[0])]}' for every cell ({n} of {n}): "
                "it has learned nothing to tell the classes apart")
    kappa, auc = metrics.get("kappa"), metrics.get("auc")
    if kappa is not None and math.isfinite(kappa) and kappa <= 0:
        return f"its classes agree with the truth no better than chance (quadratic kappa {kappa:.2f})"
    if auc is not None and math.isfinite(auc) and auc <= 0.5:
        return f"its abnormal score ranks abnormal cells no better than chance (AUC {auc:.2f})"
    return None


def undefined_metrics(metrics: dict) -> list[str]:
    """Names of the scalar metrics that could not be computed on these cells (NaN), e.g. AUC when one group is absent.

    Metrics that some heads or tasks never define (`BY_DESIGN`) are not listed.
    """
    return [name for name in SCALAR_METRICS if name not in BY_DESIGN and not math.isfinite(metrics[name])]


def severity_levels(severities: Sequence[float]) -> np.ndarray:
    """Per class [K]: the rank of its severity among the distinct severities (0 = normal)."""
    sev = np.asarray(severities, dtype=np.float64)
    return np.searchsorted(np.unique(sev), sev)


def big_mistake_rate(y: np.ndarray, pred: np.ndarray, severities: Sequence[float], levels: int = 2) -> float:
    """Share of cells [N] whose predicted class is `levels` or more severity levels from the true one; NaN if N = 0."""
    if len(y) == 0:
        return math.nan
    rank = severity_levels(severities)
    return float((np.abs(rank[np.asarray(pred)] - rank[np.asarray(y)]) >= levels).mean())


def worst_confusions(y: np.ndarray, pred: np.ndarray, severities: Sequence[float]) -> tuple[float, float]:
    """Counts of cells confused between normal and the top severity, and normal and the one below, either way.

    For the severity task: normal <-> carcinoma in situ and normal <-> severe dysplasia. NaN for
    tasks with fewer than four severity levels, where those classes do not exist.
    """
    rank = severity_levels(severities)
    top = int(rank.max())
    if top < 3:
        return math.nan, math.nan
    pair = np.sort(np.stack([rank[np.asarray(y)], rank[np.asarray(pred)]]), axis=0)  # [2, N], low rank first
    normal = pair[0] == 0
    return float((normal & (pair[1] == top)).sum()), float((normal & (pair[1] == top - 1)).sum())


def operating_points(is_abnormal: np.ndarray, abnormal_score: np.ndarray, predicted_abnormal: np.ndarray,
                     target: float = TARGET_RATE) -> dict[str, float]:
    """Screening operating points of normal vs abnormal.

    Args:
        is_abnormal: truth [N] (bool).
        abnormal_score: higher means more likely abnormal [N] (P(abnormal) or the severity score).
        predicted_abnormal: the default decision [N] (bool).

    Returns:
        sensitivity and specificity of the default decision (NaN without abnormal / normal
        cells), sens_at_spec95 (the highest sensitivity of a threshold with specificity >=
        target) and spec_at_sens95 (the reverse); both NaN unless both groups are present.
    """
    truth, decided = np.asarray(is_abnormal, bool), np.asarray(predicted_abnormal, bool)
    n_pos, n_neg = int(truth.sum()), int((~truth).sum())
    result = {"sensitivity": float((decided & truth).sum() / n_pos) if n_pos else math.nan,
              "specificity": float((~decided & ~truth).sum() / n_neg) if n_neg else math.nan,
              "sens_at_spec95": math.nan, "spec_at_sens95": math.nan}
    if n_pos and n_neg:
        from sklearn.metrics import roc_curve

        fpr, tpr, _ = roc_curve(truth, abnormal_score, drop_intermediate=False)
        eps = 1e-12  # 1 - 0.95 is not exactly 0.05 in floating point
        result["sens_at_spec95"] = float(tpr[fpr <= 1 - target + eps].max())  # fpr[0] = 0: never empty
        result["spec_at_sens95"] = float(1 - fpr[tpr >= target - eps].min())  # tpr[-1] = 1: never empty
    return result


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE of the top class probability: sum over equal-width confidence bins of |accuracy - confidence| x share.

    Bins as scikit-learn's `calibration_curve` (a confidence on an inner edge goes to the lower
    bin), so the reliability diagram shows the same bins. NaN for no cells.
    """
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y)
    if len(y) == 0:
        return math.nan
    confidence, correct = probs.max(axis=1), (probs.argmax(axis=1) == y).astype(np.float64)  # [N], [N]
    bins = np.searchsorted(np.linspace(0.0, 1.0, n_bins + 1)[1:-1], confidence)  # [N] in 0..n_bins-1
    count = np.bincount(bins, minlength=n_bins)
    gap = np.abs(np.bincount(bins, correct, n_bins) - np.bincount(bins, confidence, n_bins))  # summed per bin
    return float(gap.sum() / count.sum())


def severity_metrics(out: np.ndarray, y: np.ndarray, head: Head, severities: Sequence[float],
                     full: bool = True, threshold: float = THRESHOLD) -> dict:
    """Every metric of the tool for one set of predictions.

    Args:
        threshold: of the screening call (`screening_decision`), which sensitivity, specificity
            and screening_accuracy score.

    Returns:
        Every name of `SCALAR_METRICS` (binary_accuracy: the predicted class mapped to normal /
        abnormal, as in the poster; screening_accuracy: the screening call's), and with `full`
        also per_class_recall [K] (NaN for absent classes), confusion_matrix [K, K] (rows true,
        columns predicted), n, threshold and operating_thresholds (`operating_thresholds`).
    """
    out, y = np.asarray(out, dtype=np.float32), np.asarray(y, dtype=np.int64)
    probs, score, pred = decode(out, head, severities)
    return decoded_metrics(probs, score, pred, y, severities, full, threshold)


def decoded_metrics(probs: np.ndarray | None, score: np.ndarray, pred: np.ndarray, y: np.ndarray,
                    severities: Sequence[float], full: bool = True, threshold: float = THRESHOLD) -> dict:
    """`severity_metrics` of decoded outputs: probabilities [N, K] (None for `reg`), score [N], predicted class [N]."""
    sev = np.asarray(severities, dtype=np.float64)
    k = len(sev)
    abnormal = sev > 0
    p_abnormal = abnormal_score(probs, score, sev)
    from sklearn.metrics import cohen_kappa_score, confusion_matrix

    cm = confusion_matrix(y, pred, labels=list(range(k)))
    kappa = (cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(k)))
             if len(np.unique(np.r_[y, pred])) > 1 else math.nan)
    result = {
        "accuracy": float((pred == y).mean()),
        "binary_accuracy": float((abnormal[pred] == abnormal[y]).mean()),
        "auc": binary_auc(abnormal[y], p_abnormal),
        "mse": float(((score - sev[y]) ** 2).mean()),
        "kappa": float(kappa),
        "big_mistakes": big_mistake_rate(y, pred, sev),
    }
    result["normal_cis"], result["normal_severe"] = worst_confusions(y, pred, sev)
    called = screening_decision(p_abnormal, threshold)  # [N]
    result["screening_accuracy"] = float((called == abnormal[y]).mean())
    result.update(operating_points(abnormal[y], p_abnormal, called))
    result["ece"] = math.nan if probs is None else expected_calibration_error(probs, y)
    if full:
        support = cm.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
        result.update(per_class_recall=[float(r) for r in recall], confusion_matrix=cm.tolist(), n=int(len(y)),
                      threshold=float(threshold), operating_thresholds=operating_thresholds(abnormal[y], p_abnormal))
    return result


def bootstrap_intervals(out: np.ndarray, y: np.ndarray, head: Head, severities: Sequence[float],
                        n_boot: int = 1000, level: float = 0.95, seed: int = 0,
                        threshold: float = THRESHOLD) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap interval of every scalar metric, the cells [N] resampled with replacement.

    Args:
        out: raw outputs [N, C]; y: true classes [N].
        n_boot: resamples; level: coverage of the interval; seed: of the resampling.
        threshold: of the screening call (see `severity_metrics`).

    Returns:
        metric -> (low, high); NaN bounds for a metric undefined on every resample.
    """
    y = np.asarray(y, dtype=np.int64)
    probs, score, pred = decode(np.asarray(out, dtype=np.float32), head, severities)  # decoded once
    rng = np.random.default_rng(seed)
    values = np.full((n_boot, len(SCALAR_METRICS)), np.nan)  # [B, M]
    for b in range(n_boot):
        idx = rng.integers(0, len(y), len(y))  # [N]
        m = decoded_metrics(None if probs is None else probs[idx], score[idx], pred[idx], y[idx], severities,
                            full=False, threshold=threshold)
        values[b] = [m[name] for name in SCALAR_METRICS]
    tail = 100 * (1 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns (e.g. ece of `reg`) stay NaN
        low, high = np.nanpercentile(values, [tail, 100 - tail], axis=0)  # [M], [M]
    return {name: (float(lo), float(hi)) for name, lo, hi in zip(SCALAR_METRICS, low, high)}

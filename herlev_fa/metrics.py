"""Metrics of a severity classifier: pure functions on arrays, then thin fastai wrappers.

All take the raw model output `out` [N, C] (see ``herlev_fa.model.heads``) and the true class
indices `y` [N]. Binary (normal vs abnormal) metrics use the task's severities: a class is
abnormal when its severity is above 0. AUC-ROC of abnormal vs normal scores P(abnormal) (sum of
the abnormal classes' probabilities) for class heads, and the severity score for `reg`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from fastai.learner import Metric
from sklearn.metrics import cohen_kappa_score, confusion_matrix, roc_auc_score

from herlev_fa.model.heads import Head, get_head

SCALAR_METRICS = ("accuracy", "binary_accuracy", "auc", "mse", "kappa")


def decode(out: np.ndarray, head: str | Head,
           severities: Sequence[float]) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Raw output [N, C] -> (probabilities [N, K] or None for `reg`, score [N], predicted class [N])."""
    probs, score, pred = get_head(head).decode(torch.as_tensor(out, dtype=torch.float32), severities)
    return None if probs is None else probs.numpy(), score.numpy(), pred.numpy()


def binary_auc(is_abnormal: np.ndarray, abnormal_score: np.ndarray) -> float:
    """AUC-ROC of abnormal vs normal; NaN when only one of the two is present."""
    if len(np.unique(is_abnormal)) < 2:
        return math.nan
    return float(roc_auc_score(is_abnormal, abnormal_score))


def undefined_metrics(metrics: dict) -> list[str]:
    """Names of the scalar metrics that could not be computed (NaN), e.g. AUC when one group is absent."""
    return [name for name in SCALAR_METRICS if not math.isfinite(metrics[name])]


def severity_metrics(out: np.ndarray, y: np.ndarray, head: str | Head, severities: Sequence[float],
                     full: bool = True) -> dict:
    """Every metric of the tool for one set of predictions.

    Returns:
        accuracy, binary_accuracy, auc, mse (of the severity score), kappa (quadratic weighted),
        and with `full` also per_class_recall [K] (NaN for absent classes), confusion_matrix
        [K, K] (rows true, columns predicted) and n.
    """
    out, y = np.asarray(out, dtype=np.float32), np.asarray(y, dtype=np.int64)
    sev = np.asarray(severities, dtype=np.float64)
    k = len(sev)
    probs, score, pred = decode(out, head, severities)
    abnormal = sev > 0
    p_abnormal = score if probs is None else probs[:, abnormal].sum(axis=1)
    cm = confusion_matrix(y, pred, labels=list(range(k)))
    kappa = cohen_kappa_score(y, pred, weights="quadratic", labels=list(range(k))) if len(np.unique(np.r_[y, pred])) > 1 else math.nan
    result = {
        "accuracy": float((pred == y).mean()),
        "binary_accuracy": float((abnormal[pred] == abnormal[y]).mean()),
        "auc": binary_auc(abnormal[y], p_abnormal),
        "mse": float(((score - sev[y]) ** 2).mean()),
        "kappa": float(kappa),
    }
    if full:
        support = cm.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            recall = np.where(support > 0, np.diag(cm) / np.maximum(support, 1), np.nan)
        result.update(per_class_recall=[float(r) for r in recall], confusion_matrix=cm.tolist(), n=int(len(y)))
    return result


class EpochOutputs:
    """One validation pass's model outputs and targets, kept on the device until its metrics are read.

    fastai's `AccumMetric` copies every batch to the host, once per metric: a synchronisation
    with the GPU per batch and metric. Here the batches stay where they are (gathered over
    processes like fastai's, by `learn.to_detach`) and go to the host once, when the epoch's
    metrics are first read; all five are computed from that one copy.
    """

    def __init__(self, head: str | Head, severities: Sequence[float]):
        self.head, self.severities = get_head(head), tuple(float(s) for s in severities)
        self.reset()

    def reset(self) -> None:
        self.outs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self._metrics: dict | None = None

    def accumulate(self, learn) -> None:
        self.outs.append(learn.to_detach(learn.pred, cpu=False))  # [B, C]
        self.ys.append(learn.to_detach(learn.y, cpu=False))  # [B]
        self._metrics = None

    def metrics(self) -> dict:
        if self._metrics is None:
            if not self.outs:
                return dict.fromkeys(SCALAR_METRICS, math.nan)
            out = torch.cat(self.outs).float().cpu().numpy()  # float first: numpy has no bfloat16
            y = torch.cat(self.ys).cpu().numpy()
            self._metrics = severity_metrics(out, y, self.head, self.severities, full=False)
        return self._metrics


class SeverityMetric(Metric):
    """One scalar of `severity_metrics` as a fastai metric, read from an `EpochOutputs` it may share.

    The first metric of a shared `EpochOutputs` (`collects=True`) resets and fills it; the
    others only read it.
    """

    def __init__(self, name: str, outputs: EpochOutputs, collects: bool):
        self._name, self.outputs, self.collects = name, outputs, collects

    def reset(self) -> None:
        if self.collects:
            self.outputs.reset()

    def accumulate(self, learn) -> None:
        if self.collects:
            self.outputs.accumulate(learn)

    @property
    def value(self) -> float:
        return self.outputs.metrics()[self._name]

    @property
    def name(self) -> str:
        return self._name


def fastai_metrics(head: str | Head, severities: Sequence[float]) -> list[SeverityMetric]:
    """The scalar metrics as fastai metrics over the whole validation set, from one host copy per epoch."""
    outputs = EpochOutputs(head, severities)
    return [SeverityMetric(name, outputs, collects=i == 0) for i, name in enumerate(SCALAR_METRICS)]

"""Metrics against scikit-learn on hand-made outputs."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, roc_auc_score

from herlev_fa.metrics import SCALAR_METRICS, fastai_metrics, severity_metrics

SEV = (0.0, 1.0, 2.0, 3.0, 4.0)


def _random_cls_reg(n=60, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 5, n)
    logits = rng.normal(size=(n, 5)) + 2.0 * np.eye(5)[y]  # informative but imperfect
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    out = np.concatenate([logits, (p @ np.arange(5.0))[:, None]], axis=1).astype(np.float32)
    return out, y, p


def test_class_head_metrics_match_sklearn():
    out, y, p = _random_cls_reg()
    m = severity_metrics(out, y, "cls_reg", SEV)
    pred = p.argmax(1)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["binary_accuracy"] == pytest.approx(accuracy_score(y > 0, pred > 0))
    assert m["auc"] == pytest.approx(roc_auc_score(y > 0, p[:, 1:].sum(1)), rel=1e-5)
    assert m["mse"] == pytest.approx(np.mean((p @ np.arange(5.0) - y) ** 2), rel=1e-5)
    assert m["kappa"] == pytest.approx(cohen_kappa_score(y, pred, weights="quadratic"))
    cm = confusion_matrix(y, pred, labels=range(5))
    assert m["confusion_matrix"] == cm.tolist()
    assert m["per_class_recall"] == pytest.approx((np.diag(cm) / cm.sum(1)).tolist())
    assert m["n"] == 60
    assert 0.2 < m["accuracy"] < 1.0  # the fixture is neither trivial nor perfect


def test_reg_head_rounds_and_clips_the_score():
    out = np.array([[-0.7], [0.4], [1.6], [2.49], [7.0]], np.float32)
    y = np.array([0, 1, 2, 2, 4])
    m = severity_metrics(out, y, "reg", SEV)
    assert m["confusion_matrix"][1] == [1, 0, 0, 0, 0]  # 0.4 -> normal
    assert m["accuracy"] == pytest.approx(4 / 5)  # -0.7->0 ok, 0.4->0 wrong, 1.6->2, 2.49->2, 7->4 ok
    assert m["binary_accuracy"] == pytest.approx(4 / 5)
    assert m["mse"] == pytest.approx(np.mean((out[:, 0] - y) ** 2), rel=1e-6)
    assert m["auc"] == pytest.approx(roc_auc_score(y > 0, out[:, 0]))


def test_single_class_auc_is_nan_not_an_error():
    out, _, _ = _random_cls_reg(10)
    m = severity_metrics(out, np.ones(10, int), "cls_reg", SEV)
    assert math.isnan(m["auc"])
    assert math.isnan(m["per_class_recall"][0])


def test_fastai_metric_wrappers_agree_with_the_pure_function():
    out, y, _ = _random_cls_reg(40, seed=3)
    expected = severity_metrics(out, y, "cls_reg", SEV)
    metrics = fastai_metrics("cls_reg", SEV)
    for epoch in range(2):  # reset between epochs: the second epoch does not see the first
        for metric in metrics:
            metric.reset()
        for chunk in range(0, 40, 16):  # accumulated over batches like an epoch, as Recorder does
            learn = SimpleNamespace(pred=torch.tensor(out[chunk:chunk + 16]), y=torch.tensor(y[chunk:chunk + 16]),
                                    to_detach=lambda b, cpu=True, gather=True: b.detach())
            for metric in metrics:
                metric.accumulate(learn)
        assert [m.name for m in metrics] == list(SCALAR_METRICS)
        for metric in metrics:
            assert metric.value == pytest.approx(expected[metric.name], rel=1e-6), metric.name
    assert len(metrics[0].outputs.outs) == 3  # one entry per batch, shared by the five metrics

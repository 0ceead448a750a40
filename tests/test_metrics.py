"""Metrics against scikit-learn on hand-made outputs."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import accuracy_score, cohen_kappa_score, confusion_matrix, roc_auc_score

from herlev_fa.metrics import EPOCH_METRICS, severity_metrics
from herlev_fa.model.heads import get_head
from herlev_fa.training.learner import fastai_metrics

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
    m = severity_metrics(out, y, get_head("cls_reg"), SEV)
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
    m = severity_metrics(out, y, get_head("reg"), SEV)
    assert m["confusion_matrix"][1] == [1, 0, 0, 0, 0]  # 0.4 -> normal
    assert m["accuracy"] == pytest.approx(4 / 5)  # -0.7->0 ok, 0.4->0 wrong, 1.6->2, 2.49->2, 7->4 ok
    assert m["binary_accuracy"] == pytest.approx(4 / 5)
    assert m["mse"] == pytest.approx(np.mean((out[:, 0] - y) ** 2), rel=1e-6)
    assert m["auc"] == pytest.approx(roc_auc_score(y > 0, out[:, 0]))


def test_single_class_auc_is_nan_not_an_error():
    out, _, _ = _random_cls_reg(10)
    m = severity_metrics(out, np.ones(10, int), get_head("cls_reg"), SEV)
    assert math.isnan(m["auc"])
    assert math.isnan(m["per_class_recall"][0])


def test_fastai_metric_wrappers_agree_with_the_pure_function():
    out, y, _ = _random_cls_reg(40, seed=3)
    expected = severity_metrics(out, y, get_head("cls_reg"), SEV)
    metrics = fastai_metrics(get_head("cls_reg"), SEV)
    for epoch in range(2):  # reset between epochs: the second epoch does not see the first
        for metric in metrics:
            metric.reset()
        for chunk in range(0, 40, 16):  # accumulated over batches like an epoch, as Recorder does
            learn = SimpleNamespace(pred=torch.tensor(out[chunk:chunk + 16]), y=torch.tensor(y[chunk:chunk + 16]),
                                    to_detach=lambda b, cpu=True, gather=True: b.detach())
            for metric in metrics:
                metric.accumulate(learn)
        assert [m.name for m in metrics] == list(EPOCH_METRICS)
        for metric in metrics:
            assert metric.value == pytest.approx(expected[metric.name], rel=1e-6), metric.name
    assert len(metrics[0].outputs.outs) == 3  # one entry per batch, shared by the five metrics


# --- big mistakes, screening operating points, calibration, bootstrap (hand-computed) ---

from herlev_fa.metrics import (SCALAR_METRICS, big_mistake_rate, bootstrap_intervals,  # noqa: E402
                               expected_calibration_error, operating_points, worst_confusions)

HERLEV7_SEV = (0, 0, 0, 1, 2, 3, 4)


def test_big_mistakes_count_severity_levels_not_class_indices():
    y = np.array([0, 0, 1, 2, 4, 3, 0])
    pred = np.array([0, 2, 2, 4, 0, 3, 1])  # distances 0, 2, 1, 2, 4, 0, 1
    assert big_mistake_rate(y, pred, SEV) == pytest.approx(3 / 7)
    # herlev7: the three normal classes share level 0, so normal_superficial -> normal_columnar is no mistake
    assert big_mistake_rate(np.array([0, 0, 1, 3]), np.array([2, 4, 6, 5]), HERLEV7_SEV) == pytest.approx(3 / 4)
    assert big_mistake_rate(np.array([0, 4]), np.array([0, 4]), SEV) == 0.0  # perfect
    assert math.isnan(big_mistake_rate(np.array([], int), np.array([], int), SEV))


def test_worst_confusions_count_both_directions():
    y = np.array([0, 4, 0, 3, 0, 4, 1, 0])
    pred = np.array([4, 0, 3, 0, 0, 4, 4, 2])  # CIS: 0->4, 4->0; severe: 0->3, 3->0; 1->4 and 0->2 are neither
    assert worst_confusions(y, pred, SEV) == (2.0, 2.0)
    assert worst_confusions(np.array([1, 5]), np.array([6, 0]), HERLEV7_SEV) == (1.0, 1.0)  # normal_intermediate
    assert worst_confusions(y, y, SEV) == (0.0, 0.0)
    assert all(math.isnan(v) for v in worst_confusions(np.array([0, 1]), np.array([1, 0]), (0, 1)))  # binary task


def test_operating_points_by_hand():
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    score = np.array([0.1, 0.2, 0.3, 0.8, 0.4, 0.6, 0.7, 0.9])
    decided = score > 0.5  # one false positive (0.8), one false negative (0.4)
    points = operating_points(truth, score, decided)
    assert points["sensitivity"] == pytest.approx(3 / 4)
    assert points["specificity"] == pytest.approx(3 / 4)
    # specificity >= 95% needs no false positive: threshold above 0.8 -> only 0.9 detected
    assert points["sens_at_spec95"] == pytest.approx(1 / 4)
    # sensitivity >= 95% needs every abnormal cell: threshold 0.4 -> 0.8 is also called abnormal, 3 of 4 normal right
    assert points["spec_at_sens95"] == pytest.approx(3 / 4)


def test_operating_points_perfect_constant_and_one_group_absent():
    truth = np.array([0, 0, 1, 1], bool)
    perfect = operating_points(truth, np.array([0.1, 0.2, 0.8, 0.9]), truth)
    assert perfect == {"sensitivity": 1.0, "specificity": 1.0, "sens_at_spec95": 1.0, "spec_at_sens95": 1.0}
    constant = operating_points(truth, np.full(4, 0.5), np.ones(4, bool))
    assert constant == {"sensitivity": 1.0, "specificity": 0.0, "sens_at_spec95": 0.0, "spec_at_sens95": 0.0}
    only_abnormal = operating_points(np.ones(3, bool), np.array([0.2, 0.6, 0.9]), np.array([0, 1, 1], bool))
    assert only_abnormal["sensitivity"] == pytest.approx(2 / 3)
    assert all(math.isnan(only_abnormal[k]) for k in ("specificity", "sens_at_spec95", "spec_at_sens95"))


def test_expected_calibration_error_by_hand():
    probs = np.array([[0.95, 0.05], [0.95, 0.05], [0.6, 0.4], [0.4, 0.6]])
    y = np.array([0, 1, 0, 0])
    # bin (0.9, 1]: confidence 0.95 twice, 1 of 2 right -> |0.5 - 0.95| * 2/4
    # bin (0.5, 0.6]: confidence 0.6 twice (0.6 lies on an inner edge: the lower bin), 1 of 2 right -> |0.5 - 0.6| * 2/4
    assert expected_calibration_error(probs, y) == pytest.approx(0.45 * 0.5 + 0.1 * 0.5)
    assert expected_calibration_error(np.eye(3), np.arange(3)) == 0.0  # confident and right
    assert expected_calibration_error(np.eye(3), np.array([1, 2, 0])) == 1.0  # confident and always wrong
    assert expected_calibration_error(np.full((4, 2), 0.5), np.array([0, 0, 1, 1])) == 0.0  # constant, 50% right
    assert math.isnan(expected_calibration_error(np.zeros((0, 2)), np.array([], int)))


def test_severity_metrics_hold_every_scalar_and_reg_has_no_calibration():
    out, y, p = _random_cls_reg()
    m = severity_metrics(out, y, get_head("cls_reg"), SEV)
    assert set(SCALAR_METRICS) <= set(m)
    pred = p.argmax(1)
    assert m["big_mistakes"] == pytest.approx(np.mean(np.abs(pred - y) >= 2))
    called = p[:, 1:].sum(1) >= 0.5  # the screening call: P(abnormal) >= 0.5
    assert m["sensitivity"] == pytest.approx(np.mean(called[y > 0]))
    assert m["screening_accuracy"] == pytest.approx(np.mean(called == (y > 0)))
    assert m["sensitivity"] != pytest.approx(np.mean(pred[y > 0] > 0))  # the top class would say otherwise here
    reg = severity_metrics(np.array([[0.1], [3.9], [2.2]], np.float32), np.array([0, 4, 0]), get_head("reg"), SEV)
    assert math.isnan(reg["ece"])
    assert reg["big_mistakes"] == pytest.approx(1 / 3) and reg["normal_cis"] == 0.0
    assert reg["specificity"] == pytest.approx(1 / 2) and reg["sensitivity"] == 1.0


def test_bootstrap_intervals_contain_the_estimate_and_shrink_with_more_cells():
    out, y, _ = _random_cls_reg(60, seed=1)
    point = severity_metrics(out, y, get_head("cls_reg"), SEV, full=False)
    small = bootstrap_intervals(out, y, get_head("cls_reg"), SEV, n_boot=300, seed=0)
    assert set(small) == set(SCALAR_METRICS)
    for name in ("accuracy", "binary_accuracy", "auc", "mse", "kappa", "big_mistakes", "ece"):
        low, high = small[name]
        assert low <= point[name] <= high, name
        assert high > low, name
    # the same cells eight times over: the same estimate, about sqrt(8) times narrower intervals
    big = bootstrap_intervals(np.tile(out, (8, 1)), np.tile(y, 8), get_head("cls_reg"), SEV, n_boot=300, seed=0)
    for name in ("accuracy", "mse", "kappa", "ece"):
        ratio = (big[name][1] - big[name][0]) / (small[name][1] - small[name][0])
        assert 0.2 < ratio < 0.6, (name, ratio)
    assert bootstrap_intervals(out, y, get_head("cls_reg"), SEV, n_boot=50, seed=3) == \
        bootstrap_intervals(out, y, get_head("cls_reg"), SEV, n_boot=50, seed=3)  # seeded


def test_bootstrap_of_reg_leaves_calibration_undefined():
    out = np.array([[0.1], [0.9], [2.2], [3.6], [1.4], [0.2]], np.float32)
    y = np.array([0, 1, 2, 4, 1, 0])
    intervals = bootstrap_intervals(out, y, get_head("reg"), SEV, n_boot=100)
    assert all(math.isnan(v) for v in intervals["ece"])
    assert (intervals["accuracy"][0] <= severity_metrics(out, y, get_head("reg"), SEV)["accuracy"]
            <= intervals["accuracy"][1])


# --- the screening call: P(abnormal) against a threshold, never the top class ------------------------------------

from herlev_fa.errors import HerlevError  # noqa: E402
from herlev_fa.metrics import operating_thresholds, screening_decision, threshold_value  # noqa: E402


def _split_abnormal_logits() -> np.ndarray:
    """Two cells whose top class is normal (0.22 and 0.60) though P(abnormal) is 0.78 and 0.40; then two clear ones."""
    p = np.array([[0.22, 0.20, 0.20, 0.20, 0.18],  # top class normal, P(abnormal) = 0.78
                  [0.60, 0.10, 0.10, 0.10, 0.10],  # normal either way
                  [0.05, 0.05, 0.10, 0.20, 0.60],  # abnormal either way
                  [0.90, 0.025, 0.025, 0.025, 0.025]])
    return np.log(p).astype(np.float32)


def test_top_class_normal_but_abnormal_probability_above_half_is_called_abnormal():
    out, y = _split_abnormal_logits(), np.array([4, 0, 3, 0])  # the first cell is a carcinoma in situ
    m = severity_metrics(out, y, get_head("cls"), SEV)
    assert m["binary_accuracy"] == pytest.approx(3 / 4)  # the poster's: predicted class normal -> the CIS is missed
    assert m["screening_accuracy"] == pytest.approx(1.0)  # P(abnormal) 0.78 >= 0.5 -> found
    assert m["sensitivity"] == pytest.approx(1.0) and m["specificity"] == pytest.approx(1.0)
    strict = severity_metrics(out, y, get_head("cls"), SEV, threshold=0.8)  # 0.78 < 0.8: missed again
    assert strict["sensitivity"] == pytest.approx(1 / 2) and strict["screening_accuracy"] == pytest.approx(3 / 4)
    assert strict["threshold"] == 0.8 and strict["binary_accuracy"] == m["binary_accuracy"]


def test_prediction_table_abnormal_follows_the_probability_not_the_top_class():
    from herlev_fa.labels import get_task
    from herlev_fa.prediction import prediction_table

    run = SimpleNamespace(head=get_head("cls"), task=get_task("severity"))
    table = prediction_table(_split_abnormal_logits(), ["a", "b", "c", "d"], run)
    assert list(table["pred"]) == ["normal", "normal", "carcinoma_in_situ", "normal"]
    assert table["abnormal_prob"].to_numpy() == pytest.approx([0.78, 0.40, 0.95, 0.10], abs=1e-6)
    assert list(table["abnormal"]) == [True, False, True, False]
    assert list(table["pred_abnormal"]) == [False, False, True, False]  # the poster's call, kept under its own name
    assert list(prediction_table(_split_abnormal_logits(), list("abcd"), run, threshold=0.9)["abnormal"]) == \
        [False, False, True, False]


def test_screening_decision_reads_the_score_at_the_threshold_inclusive():
    assert list(screening_decision(np.array([0.49, 0.5, 0.51]))) == [False, True, True]
    assert list(screening_decision(np.array([0.2, 1.4, 3.0]), threshold=1.5)) == [False, False, True]


def test_operating_thresholds_reach_the_operating_points():
    truth = np.array([0, 0, 0, 0, 1, 1, 1, 1], bool)
    score = np.array([0.1, 0.2, 0.3, 0.8, 0.4, 0.6, 0.7, 0.9])
    cuts = operating_thresholds(truth, score)
    assert cuts == {"spec95": pytest.approx(0.9), "sens95": pytest.approx(0.4)}
    points = operating_points(truth, score, screening_decision(score, cuts["spec95"]))
    assert points["sensitivity"] == points["sens_at_spec95"] == pytest.approx(1 / 4)
    points = operating_points(truth, score, screening_decision(score, cuts["sens95"]))
    assert points["specificity"] == points["spec_at_sens95"] == pytest.approx(3 / 4)
    assert all(math.isnan(v) for v in operating_thresholds(np.ones(3, bool), np.array([0.1, 0.5, 0.9])).values())


def test_threshold_value_numbers_operating_points_and_errors():
    recorded = {"operating_thresholds": {"spec95": 0.83, "sens95": 0.12}}
    assert threshold_value(None) == 0.5 and threshold_value("0.3") == 0.3
    assert threshold_value("SPEC95", recorded) == 0.83 and threshold_value("sens95", recorded) == 0.12
    with pytest.raises(HerlevError, match="no recorded spec95"):
        threshold_value("spec95", None)
    with pytest.raises(HerlevError, match="not a number nor one of spec95, sens95"):
        threshold_value("high")


# --- a model that learned nothing is named, not reported silently ---------------------------------------------------

from herlev_fa.metrics import learned_nothing  # noqa: E402

CLASSES5 = ("normal", "light", "moderate", "severe", "cis")


def test_learned_nothing_names_a_one_class_model_and_chance_agreement():
    y = np.array([0, 0, 1, 2, 3, 4])
    only_normal = np.tile(np.log([0.9, 0.025, 0.025, 0.025, 0.025]), (6, 1)).astype(np.float32)
    problem = learned_nothing(severity_metrics(only_normal, y, get_head("cls"), SEV), CLASSES5)
    assert problem.startswith("predicts 'normal' for every cell (6 of 6)")
    out, y_rand, _ = _random_cls_reg()
    assert learned_nothing(severity_metrics(out, y_rand, get_head("cls_reg"), SEV), CLASSES5) is None  # informative
    chance = {"confusion_matrix": [[1, 1], [1, 1]], "kappa": 0.0, "auc": 0.7}
    assert "no better than chance (quadratic kappa 0.00)" in learned_nothing(chance, ("a", "b"))
    ranks = {"confusion_matrix": [[2, 0], [1, 1]], "kappa": 0.5, "auc": 0.45}
    assert "AUC 0.45" in learned_nothing(ranks, ("a", "b"))
    one_true_class = {"confusion_matrix": [[0, 0], [0, 5]], "kappa": float("nan"), "auc": float("nan")}
    assert learned_nothing(one_true_class, ("a", "b")) is None  # cells of one class, all right: nothing to warn


def test_write_evaluation_warns_when_the_model_predicts_one_class(tmp_path):
    from herlev_fa.evaluation import write_evaluation
    from herlev_fa.labels import get_task

    y = np.array([0, 0, 0, 1, 2, 4])
    out = np.tile(np.log([0.9, 0.025, 0.025, 0.025, 0.025]), (6, 1)).astype(np.float32)
    with pytest.warns(UserWarning, match="predicts 'normal' for every cell"):
        write_evaluation(tmp_path, out, y, get_task("severity"), get_head("cls"))


def test_cv_summary_puts_the_warnings_of_folds_that_learned_nothing_first():
    from herlev_fa.training.loop import fold_warnings, summarize, summary_markdown

    good = {"confusion_matrix": [[2, 0], [0, 2]], "kappa": 1.0, "auc": 1.0, "accuracy": 1.0}
    flat = {"confusion_matrix": [[2, 0], [2, 0]], "kappa": 0.0, "auc": 0.5, "accuracy": 0.5}
    notes = fold_warnings(["fold0", "fold1"], [good, flat], ("normal", "abnormal"))
    assert notes == ["fold1: the model predicts 'normal' for every cell (4 of 4): it has learned nothing to tell "
                     "the classes apart"]
    text = summary_markdown(summarize([good, flat]), "t", notes)
    assert text.index("**Warning**: fold1: the model predicts 'normal'") < text.index("| metric |")

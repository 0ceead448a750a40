"""Fold ensembles, screening figures and the evaluate table: a cross-validated run used as one model."""

from __future__ import annotations

import json
import math
import re
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa.ensemble import FoldEnsemble, fold_folders
from herlev_fa.metrics import SCALAR_METRICS
from herlev_fa.model.heads import get_head
from herlev_fa.prediction import predict_outputs
from herlev_fa.runs import load_run

runner = CliRunner()
WIDE = {"COLUMNS": "200"}  # one table row per line, whatever the terminal


SEV = (0.0, 1.0, 2.0, 3.0, 4.0)


def _toy(seed: int, n_out: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, n_out)).eval()


def test_an_ensemble_of_identical_models_predicts_as_that_model():
    head, model, x = get_head("cls"), _toy(0), torch.randn(5, 3, 12, 12)
    with torch.no_grad():
        for n in (2, 3):
            probs, score, pred = head.decode(FoldEnsemble([model] * n, head, SEV)(x), SEV)
            want = head.decode(model(x), SEV)
            torch.testing.assert_close(probs, want[0], rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(score, want[1], rtol=1e-5, atol=1e-5)
            assert torch.equal(pred, want[2])


def test_an_ensemble_averages_probabilities_as_test_time_augmentation_does_and_has_its_gradient():
    """One averaging rule, `Head.average_views`: the mean probabilities (cls_reg: their expected severity)."""
    head = get_head("cls_reg")
    a, b, x = _toy(1, 6), _toy(2, 6), torch.randn(4, 3, 12, 12, requires_grad=True)
    out = FoldEnsemble([a, b], head, SEV)(x)  # [4, 6]
    assert out.shape == (4, 6)
    mean_p = (a(x)[:, :5].softmax(1) + b(x)[:, :5].softmax(1)) / 2  # [4, 5]
    torch.testing.assert_close(out[:, :5].softmax(1), mean_p)
    torch.testing.assert_close(out[:, 5], mean_p @ torch.tensor(SEV))  # = the mean of the two scores
    torch.testing.assert_close(out, head.average_views(torch.stack([a(x), b(x)]), SEV))
    assert not torch.allclose(a(x), b(x))  # the two really differ
    grad = torch.autograd.grad(out[:, 5].sum(), x)[0]  # what IG integrates: the ensemble's own gradient
    want = torch.autograd.grad((mean_p @ torch.tensor(SEV)).sum(), x)[0]
    torch.testing.assert_close(grad, want)


@pytest.fixture(scope="module")
def cv_run(synth_data, tmp_path_factory, device):
    """A 2-fold cross-validated cls_reg run (fold0/, fold1/), and a folder of new cells."""
    from herlev_fa.data.synth import write_synthetic

    out = tmp_path_factory.mktemp("cv")
    result = runner.invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                 "--head", "cls_reg", "--size", "32", "--epochs", "2", "--lr", "3e-3", "--bs", "16",
                                 "--folds", "2", "--fold", "all", "--seed", "0", "--device", device, "--out", str(out),
                                 "--name", "cv", "--quiet"])
    assert result.exit_code == 0, result.output
    new = write_synthetic(out / "new", per_class=3, size=48, seed=7)
    return out / "cv", new


def test_a_cv_folder_loads_as_the_ensemble_of_its_folds(cv_run):
    cv, new = cv_run
    assert [p.name for p in fold_folders(cv)] == ["fold0", "fold1"]
    assert fold_folders(cv / "fold0") == []  # a run folder is never an ensemble
    run = load_run(cv)
    assert len(run.members) == 2 and run.head == get_head("cls_reg") and run.fold is None
    assert run.describe() == "ensemble of 2 fold models (mean of their outputs)"
    paths = sorted(str(p) for p in new.rglob("*.BMP") if not p.name.endswith("-d.bmp"))[:6]
    got, _ = predict_outputs(run, paths, progress=False)
    members = [predict_outputs(m, paths, progress=False)[0] for m in run.members]
    mean_p = sum(torch.from_numpy(m[:, :5]).softmax(1) for m in members) / 2  # [6, 5]
    torch.testing.assert_close(torch.from_numpy(got[:, :5]).softmax(1), mean_p, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(got[:, 5], (members[0][:, 5] + members[1][:, 5]) / 2, rtol=1e-4, atol=1e-5)
    assert not np.allclose(members[0], members[1], atol=1e-3)  # two different models


def test_predict_explain_and_quantify_say_they_use_the_ensemble(cv_run, tmp_path):
    cv, new = cv_run
    image = next(p for p in sorted((new / "carcinoma_in_situ").glob("*.BMP")))
    line = f"model: the ensemble of 2 fold models (mean of their outputs) in {cv}"
    result = runner.invoke(app, ["predict", str(new / "carcinoma_in_situ"), "--run", str(cv), "--device", "cpu",
                                 "--out", str(tmp_path / "p.csv")], env=WIDE)
    assert result.exit_code == 0, result.output
    assert line in result.output
    preds = pd.read_csv(tmp_path / "p.csv")
    assert len(preds) == 3 and np.allclose(preds.filter(like="p_").sum(axis=1), 1.0, atol=1e-5)
    result = runner.invoke(app, ["explain", str(image), "--run", str(cv), "--steps", "4", "--device", "cpu",
                                 "--out", str(tmp_path / "ex"), "--quiet"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert line in result.output
    row = pd.read_csv(tmp_path / "ex" / "explanations.csv").iloc[0]
    ensemble_score = pd.read_csv(tmp_path / "p.csv").set_index("path").loc[str(image), "score"]
    assert row["score"] == pytest.approx(ensemble_score, abs=1e-4)  # the ensemble's output is what was explained
    result = runner.invoke(app, ["quantify", "--run", str(cv), "--data", str(new), "--split", "all", "--steps", "2",
                                 "--device", "cpu", "--out", str(tmp_path / "q"), "--quiet"], env=WIDE)
    assert result.exit_code == 0, result.output
    assert line in result.output
    assert len(pd.read_csv(tmp_path / "q" / "quantify.csv")) == 21


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]


def test_evaluate_reports_the_ensemble_beside_each_fold_model_with_intervals(cv_run, tmp_path):
    cv, new = cv_run
    result = runner.invoke(app, ["evaluate", str(cv), "--data", str(new), "--device", "cpu", "--bootstrap", "200",
                                 "--out", str(tmp_path / "ev")], env=WIDE)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "ev" / "metrics.json").read_text())
    assert metrics["model"] == "ensemble of 2 fold models (mean of their outputs)" and metrics["n"] == 21
    assert set(metrics["members"]) == {"fold0", "fold1"}
    assert set(metrics["intervals"]) == set(SCALAR_METRICS) and metrics["bootstrap"]["resamples"] == 200
    lines = result.output.splitlines()
    assert _cells(next(line for line in lines if "metric" in line)) == ["metric", "ensemble [95% CI]", "fold0", "fold1"]
    for name in SCALAR_METRICS:
        row = _cells(next(line for line in lines if _cells(line)[:1] == [name]))
        value = metrics[name]
        if name in ("normal_cis", "normal_severe"):
            assert row[1].startswith(f"{value:.0f} [")
        else:
            low, high = metrics["intervals"][name]
            assert row[1] == f"{value:.3f} [{low:.3f}, {high:.3f}]"
        assert row[2:] == [f"{metrics['members'][f][name]:.3f}" if name not in ("normal_cis", "normal_severe")
                           else f"{metrics['members'][f][name]:.0f}" for f in ("fold0", "fold1")]
    for figure in ("roc.png", "reliability.png", "confusion_matrix.png", "score_distribution.png"):
        assert (tmp_path / "ev" / figure).stat().st_size > 5000, figure


def test_an_ensemble_has_no_held_out_fold(cv_run):
    cv, _ = cv_run
    result = runner.invoke(app, ["evaluate", str(cv), "--device", "cpu"], env=WIDE)
    _one_line_error(result, r"ensemble of 2 fold models.*no held-out fold.*--data DIR")


def _one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert re.search(pattern, lines[0]), lines[0]


@pytest.mark.parametrize("damage", ["missing", "no_weights", "bad_weights", "unfinished"])
def test_a_missing_or_broken_fold_model_is_one_line_naming_it(cv_run, tmp_path, damage):
    cv, new = cv_run
    copy = tmp_path / "cv"
    shutil.copytree(cv, copy)
    fold1 = copy / "fold1"
    if damage == "missing":
        shutil.rmtree(fold1)
    elif damage == "no_weights":
        (fold1 / "model.safetensors").unlink()
    elif damage == "bad_weights":
        (fold1 / "model.safetensors").write_bytes(b"not a safetensors file")
    else:
        (fold1 / "herlev.json").unlink()
    pattern = re.escape(f"fold model '{fold1}'") + (" of the ensemble is missing" if damage == "missing" else
                                                    " of the ensemble is broken")
    with pytest.raises(Exception, match=pattern):
        load_run(copy)
    result = runner.invoke(app, ["predict", str(new), "--run", str(copy), "--device", "cpu",
                                 "--out", str(tmp_path / "p.csv")], env=WIDE)
    _one_line_error(result, pattern)
    assert not (tmp_path / "p.csv").exists()


def test_evaluate_of_one_run_prints_every_metric_with_its_interval(trained_run, tmp_path):
    result = runner.invoke(app, ["evaluate", str(trained_run), "--device", "cpu", "--bootstrap", "100",
                                 "--out", str(tmp_path)], env=WIDE)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["model"] == "one model" and "members" not in metrics
    lines = result.output.splitlines()
    assert _cells(next(line for line in lines if "metric" in line)) == ["metric", "run [95% CI]"]
    rows = {c[0]: c[1] for c in map(_cells, lines) if len(c) == 2 and c[0] in SCALAR_METRICS}
    assert list(rows) == list(SCALAR_METRICS)
    assert rows["big_mistakes"] == (f"{metrics['big_mistakes']:.3f} [{metrics['intervals']['big_mistakes'][0]:.3f}, "
                                    f"{metrics['intervals']['big_mistakes'][1]:.3f}]")
    assert 0 <= metrics["sens_at_spec95"] <= 1 and 0 <= metrics["ece"] <= 1 and not math.isnan(metrics["auc"])
    assert "100 resamples" in result.output


def test_a_negative_bootstrap_is_one_line(trained_run, tmp_path):
    result = runner.invoke(app, ["evaluate", str(trained_run), "--bootstrap", "-5", "--out", str(tmp_path / "ev")],
                           env=WIDE)
    _one_line_error(result, r"--bootstrap -5 is out of range")
    assert not (tmp_path / "ev").exists()


@pytest.mark.parametrize("case", ["mixed", "one_group", "all_right"])
def test_roc_and_reliability_figures_draw_edge_cases_without_pyplot_state(tmp_path, case):
    import matplotlib.pyplot as plt

    from herlev_fa.figures import reliability_png, roc_png
    from herlev_fa.metrics import expected_calibration_error, operating_points

    rng = np.random.default_rng(0)
    y = {"mixed": rng.integers(0, 3, 40), "one_group": np.ones(40, int), "all_right": np.arange(40) % 3}[case]
    probs = np.full((40, 3), 0.1) + 0.8 * np.eye(3)[y if case == "all_right" else rng.integers(0, 3, 40)]  # [N, 3]
    truth, score = y > 0, probs[:, 1:].sum(axis=1)
    points = operating_points(truth, score, probs.argmax(axis=1) > 0)
    before = plt.get_fignums()
    roc = roc_png(truth, score, points, tmp_path / "roc.png")
    rel = reliability_png(probs, y, expected_calibration_error(probs, y), tmp_path / "rel.png")
    assert roc.stat().st_size > 5000 and rel.stat().st_size > 5000
    assert plt.get_fignums() == before  # no figure left in pyplot's registry
    assert not list(tmp_path.glob("*.tmp"))

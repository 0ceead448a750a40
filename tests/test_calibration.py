"""Temperature scaling: the pure functions on toy probabilities, then `herlev calibrate` and `predict --calibrated`."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa.calibration import cross_fitted_ece, fit_temperature, nll, scale_probabilities
from herlev_fa.metrics import expected_calibration_error
from herlev_fa.model.heads import get_head

runner = CliRunner()


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_scaling_probabilities_is_softmax_of_logits_over_t_and_keeps_their_order():
    z = np.random.default_rng(0).normal(size=(50, 5)) * 3
    p = _softmax(z)
    np.testing.assert_allclose(scale_probabilities(p, 2.0), _softmax(z / 2.0), atol=1e-9)
    np.testing.assert_allclose(scale_probabilities(p, 1.0), p, atol=1e-12)
    assert (scale_probabilities(p, 0.3).argmax(1) == p.argmax(1)).all()
    assert scale_probabilities(p, 4.0).max(1).mean() < p.max(1).mean() < scale_probabilities(p, 0.5).max(1).mean()


def test_fit_temperature_recovers_the_overconfidence_and_cross_fitting_lowers_the_ece():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(4000, 5)) * 1.5
    truth = _softmax(z)  # the classes are drawn from these
    y = np.array([rng.choice(5, p=q) for q in truth])
    overconfident = _softmax(3.0 * z)  # a model three times too sure
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(3.0, rel=0.1)
    assert nll(scale_probabilities(overconfident, t), y) < nll(overconfident, y)
    after, halves = cross_fitted_ece(overconfident, y)
    before = expected_calibration_error(overconfident, y)
    assert after < before / 2 and all(h == pytest.approx(3.0, rel=0.15) for h in halves)


def test_calibrate_then_predict_calibrated(trained_run, synth_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)  # the shared run stays as it is
    uncalibrated = runner.invoke(app, ["predict", str(synth_data / "light_dysplastic"), "--run", str(run),
                                       "--out", str(tmp_path / "p.csv"), "--device", "cpu", "--calibrated"])
    assert uncalibrated.exit_code == 2 and "is not calibrated: run herlev calibrate" in uncalibrated.output
    result = runner.invoke(app, ["calibrate", str(run)])
    assert result.exit_code == 0, result.output
    record = json.loads((run / "calibration.json").read_text())
    held = pd.read_csv(run / "predictions.csv")
    from herlev_fa.metrics import decode

    probs, _, _ = decode(held[[c for c in held if c.startswith("out_")]].to_numpy(np.float32), get_head("cls_reg"),
                         (0, 1, 2, 3, 4))
    assert record["temperature"] == pytest.approx(fit_temperature(probs, held["y"].to_numpy()))
    assert record["ece_before"] == pytest.approx(expected_calibration_error(probs, held["y"].to_numpy()))
    assert f"temperature {record['temperature']:.3f} on {len(held)} held-out cells" in result.output
    assert (run / "reliability_calibrated.png").stat().st_size > 10_000
    base = runner.invoke(app, ["predict", str(synth_data / "light_dysplastic"), "--run", str(run),
                               "--out", str(tmp_path / "a.csv"), "--device", "cpu"])
    scaled = runner.invoke(app, ["predict", str(synth_data / "light_dysplastic"), "--run", str(run),
                                 "--out", str(tmp_path / "b.csv"), "--device", "cpu", "--calibrated"])
    assert base.exit_code == scaled.exit_code == 0, scaled.output
    a, b = pd.read_csv(tmp_path / "a.csv"), pd.read_csv(tmp_path / "b.csv")
    columns = [c for c in a if c.startswith("p_")]
    np.testing.assert_allclose(b[columns], scale_probabilities(a[columns].to_numpy(), record["temperature"]), atol=1e-6)
    assert (a["pred"] == b["pred"]).all()  # a temperature never changes the predicted class
    assert (b["abnormal"] == (b["abnormal_prob"] >= 0.5)).all()

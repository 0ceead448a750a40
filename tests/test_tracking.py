"""`herlev train --log tensorboard`: fastai's TensorBoard callback writes the run's losses and metrics."""

import pytest
from typer.testing import CliRunner

from herlev_cli.main import app

runner = CliRunner()


def test_train_logs_losses_and_metrics_to_tensorboard(synth_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = runner.invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                 "--folds", "2", "--epochs", "2", "--size", "32", "--bs", "16", "--lr", "3e-3",
                                 "--out", str(tmp_path), "--name", "tb", "--device", "cpu", "--quiet",
                                 "--log", "tensorboard"])
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train_loss", "valid_loss", "accuracy", "kappa"} <= set(scalars)
    assert len(events.Scalars("accuracy")) == 2  # one point per epoch
    batches = len(events.Scalars("train_loss"))
    assert batches >= 2 * 4  # one per training batch: 84 cells / 16 per batch, two epochs


def test_an_unknown_tracker_is_refused():
    result = runner.invoke(app, ["train", "--data", ".", "--log", "comet"])
    assert result.exit_code == 2 and "unknown --log 'comet': choose tensorboard" in result.output

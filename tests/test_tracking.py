"""`herlev train --log`: TensorBoard, W&B and MLflow record the run's losses and metrics, one value per epoch."""

import json
import struct
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa.config import LOGGERS
from herlev_fa.training.tracking import TRACKERS

runner = CliRunner()
EPOCHS = 2


def _train(data: Path, out: Path, name: str, log: str):
    return runner.invoke(app, ["train", "--data", str(data), "--arch", "test_resnet", "--no-pretrained",
                               "--folds", "2", "--epochs", str(EPOCHS), "--size", "32", "--bs", "16", "--lr", "3e-3",
                               "--out", str(out), "--name", name, "--device", "cpu", "--quiet", "--log", log])


def test_train_logs_losses_and_metrics_to_tensorboard(synth_data, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    result = _train(synth_data, tmp_path, "tb", "tensorboard")
    assert result.exit_code == 0, result.output
    events = EventAccumulator(str(tmp_path / "tb" / "tensorboard"))
    events.Reload()
    scalars = events.Tags()["scalars"]
    assert {"train_loss", "valid_loss", "accuracy", "kappa"} <= set(scalars)
    assert len(events.Scalars("accuracy")) == 2  # one point per epoch
    batches = len(events.Scalars("train_loss"))
    assert batches >= 2 * 4  # one per training batch: 84 cells / 16 per batch, two epochs


def _wandb_history(run_file: Path) -> list[dict]:
    """The history rows of an offline W&B run file (run-ID.wandb: W&B's LevelDB-style log of protobuf records)."""
    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, chunk, rows = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a record header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0 and length == 0:
            break
        chunk, pos = chunk + data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(chunk)
            chunk = b""
            if record.WhichOneof("record_type") == "history":
                rows.append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item})
    return rows


def test_train_logs_epochs_to_an_offline_wandb_run(synth_data, tmp_path, monkeypatch):
    for var, folder in [("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                        ("WANDB_ARTIFACT_DIR", "artifacts")]:
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / folder))
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_PROJECT", raising=False)

    result = _train(synth_data, tmp_path, "wb", "wandb")
    assert result.exit_code == 0, result.output
    (run_file,) = (tmp_path / "wb" / "wandb").glob("offline-run-*/run-*.wandb")
    epochs = [row for row in _wandb_history(run_file) if "valid_loss" in row]
    log = pd.read_csv(tmp_path / "wb" / "log.csv")
    assert len(epochs) == len(log) == EPOCHS
    for row, (_, expected) in zip(epochs, log.iterrows()):
        for name in ("valid_loss", "accuracy", "kappa", "auc"):
            assert row[name] == pytest.approx(expected[name], rel=1e-6), name
    assert [row["epoch"] for row in epochs] == [1, 2]  # fastai's count of completed epochs


def test_train_logs_epochs_and_settings_to_mlflow(synth_data, tmp_path, monkeypatch):
    from mlflow import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_EXPERIMENT_NAME", raising=False)
    monkeypatch.chdir(tmp_path)  # nothing may land in the working folder

    result = _train(synth_data, tmp_path / "runs", "ml", "mlflow")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["runs"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("herlev_fa").experiment_id])
    assert run.info.run_name == "ml" and run.info.status == "FINISHED"
    assert run.data.params["model.arch"] == "test_resnet" and run.data.params["epochs"] == str(EPOCHS)
    log = pd.read_csv(tmp_path / "runs" / "ml" / "log.csv")
    assert len(log) == EPOCHS
    for name in ("valid_loss", "accuracy", "kappa", "train_ce", "lr"):
        history = client.get_metric_history(run.info.run_id, name)
        assert [m.step for m in history] == list(range(EPOCHS)), name
        assert [m.value for m in history] == pytest.approx(log[name].tolist(), rel=1e-6), name


@pytest.mark.parametrize("log, blocked", [("tensorboard", ["tensorboard", "torch.utils.tensorboard"]),
                                          ("wandb", ["wandb"]), ("mlflow", ["mlflow"]), ("mlflow", ["sqlalchemy"])])
def test_a_missing_tracker_package_is_one_line_before_any_work(synth_data, tmp_path, monkeypatch, log, blocked):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    for module in blocked:
        monkeypatch.setitem(sys.modules, module, None)  # `import module` raises ImportError
    result = _train(synth_data, tmp_path, "x", log)
    assert result.exit_code == 2
    assert f"--log {log} needs the {TRACKERS[log].package} package: pip install \"herlev_fa[{log}]\"" in result.output
    assert not (tmp_path / "x").exists()  # refused before the run folder, the decoding and any epoch


def test_every_tracker_the_options_accept_is_wired_in():
    assert tuple(TRACKERS) == LOGGERS


def test_an_unknown_tracker_is_refused():
    result = runner.invoke(app, ["train", "--data", ".", "--log", "comet"])
    assert result.exit_code == 2 and "unknown --log 'comet': choose tensorboard, wandb, mlflow" in result.output

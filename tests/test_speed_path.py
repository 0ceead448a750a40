"""The GPU fast path's callbacks, exercised on the CPU: bf16 autocast without a scaler, channels-last."""

import json

import pandas as pd
import torch
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa.callbacks import BF16, ChannelsLast
from herlev_fa.config import resolve_precision
from herlev_fa.train import speed_callbacks


def test_precision_auto_is_bf16_only_on_cuda():
    assert resolve_precision("auto", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    assert [type(cb) for cb in speed_callbacks("cpu", "auto")] == []
    assert [type(cb) for cb in speed_callbacks("cpu", "bf16")] == [BF16]


def test_bf16_training_runs_and_learns_on_the_cpu(synth_data, tmp_path):
    result = CliRunner().invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                      "--size", "48", "--epochs", "6", "--lr", "3e-3", "--bs", "16", "--seed", "0",
                                      "--precision", "bf16", "--device", "cpu", "--out", str(tmp_path), "--name", "b",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    log = pd.read_csv(tmp_path / "b" / "log.csv")
    assert log[["train_loss", "valid_loss"]].notna().all().all()
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]
    meta = json.loads((tmp_path / "b" / "herlev.json").read_text())
    assert meta["config"]["precision"] == "bf16"
    assert json.loads((tmp_path / "b" / "metrics.json").read_text())["accuracy"] > 0.43  # above the majority class


def test_bf16_callback_autocasts_forward_and_returns_fp32(trained_run):
    from herlev_fa.runs import load_run

    run = load_run(trained_run)
    seen = {}

    def hook(module, args, output):
        seen["dtype"] = output.dtype

    handle = run.model.net.conv1[0].register_forward_hook(hook)

    class FakeLearn:
        pass

    learn = FakeLearn()
    learn.dls = type("D", (), {"device": torch.device("cpu")})()
    cb = BF16()
    cb.learn = learn
    cb.before_batch()
    learn.pred = run.model(torch.randn(2, 3, 48, 48))
    cb.after_pred()
    cb.after_loss()
    handle.remove()
    assert seen["dtype"] == torch.bfloat16  # the convolution ran in bf16
    assert learn.pred.dtype == torch.float32  # the loss and metrics see fp32
    assert not torch.is_autocast_enabled("cpu")  # and autocast was left


def test_channels_last_callback_converts_model_and_batches(trained_run):
    from herlev_fa.runs import load_run

    model = load_run(trained_run).model

    class FakeLearn:
        pass

    learn = FakeLearn()
    learn.model, learn.xb = model, (torch.randn(2, 3, 48, 48),)
    cb = ChannelsLast()
    cb.learn = learn
    cb.before_fit()
    cb.before_batch()
    assert model.net.conv1[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert learn.xb[0].is_contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        assert model(learn.xb[0]).shape == (2, 6)

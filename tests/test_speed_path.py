"""The GPU fast path's callbacks, exercised on the CPU: bf16 autocast without a scaler, channels-last."""

import json

import pandas as pd
import torch
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa.training.callbacks import BF16, ChannelsLast
from herlev_fa.config import resolve_precision
from herlev_fa.training.loop import speed_callbacks


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


# ---------------------------------------------------------------------------------------------
# No host synchronisation per batch. On a GPU every read of a device tensor from Python (item,
# float, cpu, bool, ...) makes the host wait for all queued work; fastai's recorder, progress
# bar and AccumMetric do it every batch. Here every such read made inside a training or
# validation batch of a fit is recorded, with its call stack.

HOST_READS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__", "__format__")


def _reads_inside_batches(monkeypatch, synth_data, tmp_path, quiet: bool, device: str):
    import importlib
    import time
    import traceback

    from fastai.callback.core import Callback, GatherPredsCallback

    import herlev_fa

    train_module = importlib.import_module("herlev_fa.training.loop")
    state = {"fit": False, "batch": False, "batches": 0}
    reads = []

    class Open(Callback):
        order = -100

        def before_fit(self):  # get_preds fires before_fit too: it is an evaluation, not a fit
            state["fit"] = not any(isinstance(cb, GatherPredsCallback) for cb in self.learn.cbs)

        def before_batch(self):
            state["batch"] = state["fit"]
            state["batches"] += state["fit"]

    class Close(Callback):
        order = 1000

        def after_batch(self):
            state["batch"] = False

        def after_cancel_batch(self):
            state["batch"] = False

        def after_fit(self):
            state["fit"] = False

    for name in HOST_READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _name=name, _original=original, **kwargs):
            if state["batch"]:
                stack = traceback.extract_stack()[:-1]
                # fastai's one-cycle schedule (`combine_scheds`) compares a Python float with a CPU
                # tensor of phase boundaries, and torch's AdamW reads its step count, which it keeps on
                # the host (not capturable): host arithmetic, never a device tensor
                host_only = (stack[-1].filename.endswith("fastai/callback/schedule.py")
                             or (stack[-1].name == "_get_value" and "torch/optim/" in stack[-1].filename))
                if not host_only:
                    reads.append((_name, [f"{f.filename.split('site-packages/')[-1]}:{f.lineno}" for f in stack[-6:]]))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    speed = train_module.speed_callbacks
    monkeypatch.setattr(train_module, "speed_callbacks", lambda d, p: [Open(), Close(), *speed(d, p)])
    cfg = herlev_fa.TrainConfig(herlev_fa.DataConfig(synth_data, size=32, bs=16, seed=0),
                                herlev_fa.ModelConfig("test_resnet", pretrained=False, head="cls_reg"), epochs=2,
                                lr=1e-3, device=device, out=tmp_path, name=f"q{quiet}", quiet=quiet)
    started = time.monotonic()
    herlev_fa.train(cfg)
    return reads, state["batches"], time.monotonic() - started


def test_no_host_read_inside_training_or_validation_batches(monkeypatch, synth_data, tmp_path, device):
    reads, batches, _ = _reads_inside_batches(monkeypatch, synth_data, tmp_path, quiet=True, device=device)
    assert batches >= 2 * (7 + 2)  # 2 epochs of at least 7 training and 2 validation batches were watched
    assert reads == []


def test_the_progress_bar_reads_the_loss_at_most_once_a_second(monkeypatch, synth_data, tmp_path, device):
    reads, batches, seconds = _reads_inside_batches(monkeypatch, synth_data, tmp_path, quiet=False, device=device)
    assert batches >= 2 * (7 + 2)
    assert reads, "the bar shows the loss at least once"
    assert all(any("herlev_fa/training/callbacks.py" in f for f in stack) for _, stack in reads), reads
    assert len(reads) <= 1 + seconds  # fastai's own bar: one per training batch

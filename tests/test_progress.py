"""Progress a user can read in a log file, and long jobs that keep their work when stopped."""

import io
import re

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import herlev_cli.explain  # noqa: F401  (registers quantify)
from herlev_cli.main import app
from herlev_fa.config import IGSettings
from herlev_fa.errors import HerlevError
from herlev_fa.explanation.attribution import explainer_for
from herlev_fa.explanation.report import PARTIAL, quantify, sample_items
from herlev_fa.progress import PlainProgress, duration, progress_line, rich_bar
from herlev_fa.runs import load_run

runner = CliRunner()


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_progress_line_estimates_from_the_first_step():
    assert duration(3725) == "1:02:05" and duration(-3) == "0:00:00"
    assert progress_line("quantifying", 8, 184, 39.0) == "quantifying: 8/184 (4%), 0:00:39 elapsed, about 0:14:18 left"
    assert progress_line("quantifying", 184, 184, 900.0) == "quantifying: 184/184 (100%), 0:15:00 elapsed"


def test_plain_progress_writes_a_line_per_batch_group_and_a_last_one_only_when_slow():
    clock, stream = Clock(), io.StringIO()
    with PlainProgress("quantifying", 24, every=10, stream=stream, clock=clock) as bar:
        for _ in range(3):
            clock.now += 39  # one slow batch of 8
            bar.advance(8)
    assert stream.getvalue().splitlines() == [
        "quantifying: 8/24 (33%), 0:00:39 elapsed, about 0:01:18 left",
        "quantifying: 16/24 (67%), 0:01:18 elapsed, about 0:00:39 left",
        "quantifying: 24/24 (100%), 0:01:57 elapsed"]
    quick, stream = Clock(), io.StringIO()
    with PlainProgress("predicting", 100, every=10, stream=stream, clock=quick) as bar:
        for _ in range(10):
            quick.now += 0.1
            bar.advance(10)
    assert stream.getvalue() == ""  # a loop of a second leaves no trace in the log


def test_rich_bar_has_a_time_estimate_after_one_slow_batch():
    from rich.console import Console

    clock = Clock()
    bar, task = rich_bar(Console(file=io.StringIO(), force_terminal=True), "quantifying", 184, get_time=clock)
    clock.now = 39.0
    bar.advance(task, 8)
    remaining = bar.tasks[0].time_remaining
    assert remaining == pytest.approx(39.0 / 8 * 176)  # rich's default would have none until a second update


def test_train_to_a_log_prints_one_line_per_epoch_with_elapsed_and_time_left(synth_data, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                 "--folds", "2", "--epochs", "2", "--size", "32", "--bs", "32", "--lr", "3e-3",
                                 "--out", str(tmp_path), "--name", "log", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if line.startswith("fold 0 epoch")]
    assert len(lines) == 2, result.stdout
    first = re.fullmatch(r"fold 0 epoch 1/2: train_loss [\d.]+, valid_loss [\d.]+, accuracy [\d.]+, .*; "
                         r"\d:\d\d:\d\d elapsed, about \d:\d\d:\d\d left", lines[0])
    assert first, lines[0]
    assert lines[1].startswith("fold 0 epoch 2/2: ") and lines[1].endswith("elapsed")  # nothing left
    assert "\r" not in result.stdout and "█" not in result.stdout  # no progress bar in the log
    quiet = runner.invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                "--folds", "2", "--epochs", "1", "--size", "32", "--bs", "32", "--lr", "3e-3",
                                "--out", str(tmp_path), "--name", "quiet", "--device", "cpu", "--quiet"])
    assert quiet.exit_code == 0 and "epoch 1/1" not in quiet.stdout


def test_sample_items_is_seeded_ordered_and_checked():
    items = pd.DataFrame({"path": [f"p{i}" for i in range(20)]})
    a, b = sample_items(items, 5, seed=3), sample_items(items, 5, seed=3)
    assert list(a["path"]) == list(b["path"]) and len(a) == 5
    assert list(a["path"]) == sorted(a["path"], key=lambda p: int(p[1:]))  # kept in order
    assert list(sample_items(items, 5, seed=4)["path"]) != list(a["path"])
    assert sample_items(items, None) is items and sample_items(items, 50) is items
    with pytest.raises(HerlevError, match="^limit 0 is out of range"):
        sample_items(items, 0)


class StopAfter:
    """An explainer that is interrupted (Ctrl-C) after `n` batches."""

    def __init__(self, explainer, n):
        self.explainer, self.n = explainer, n

    def __getattr__(self, name):
        return getattr(self.explainer, name)

    def attribute(self, *args, **kwargs):
        if self.n == 0:
            raise KeyboardInterrupt
        self.n -= 1
        return self.explainer.attribute(*args, **kwargs)


def test_a_stopped_quantify_keeps_its_rows_and_resume_finishes_it_with_the_same_numbers(trained_run, tmp_path):
    run = load_run(trained_run)
    settings = IGSettings(steps=2, bs=4, device="cpu")
    whole = quantify(run, out=tmp_path / "whole", settings=settings, progress=False, limit=10, seed=1)
    assert len(whole.table) == 10 and not (tmp_path / "whole" / PARTIAL).exists()
    with pytest.raises(KeyboardInterrupt):
        quantify(run, out=tmp_path / "q", settings=settings, progress=False, limit=10, seed=1,
                 explainer=StopAfter(explainer_for(run, settings), 2))
    kept = pd.read_csv(tmp_path / "q" / PARTIAL)
    assert len(kept) == 8 and not (tmp_path / "q" / "quantify.csv").exists()  # two batches of 4 survive the stop
    with pytest.raises(HerlevError, match=r"other settings \(settings\)"):
        quantify(run, out=tmp_path / "q", settings=IGSettings(steps=3, bs=4, device="cpu"), progress=False,
                 limit=10, seed=1, resume=True)
    counting = StopAfter(explainer_for(run, settings), 99)
    done = quantify(run, out=tmp_path / "q", settings=settings, progress=False, limit=10, seed=1, resume=True,
                    explainer=counting)
    assert counting.n == 99 - 1  # only the last 2 cells were explained: one batch
    assert list(done.table["path"]) == list(whole.table["path"])
    numeric = whole.table.select_dtypes("number").columns
    np.testing.assert_allclose(done.table[numeric].to_numpy(), whole.table[numeric].to_numpy(), rtol=1e-6, atol=1e-9)
    assert not (tmp_path / "q" / PARTIAL).exists() and len(pd.read_csv(tmp_path / "q" / "quantify.csv")) == 10


def test_quantify_cli_limit_and_resume_options(trained_run, tmp_path):
    args = ["quantify", "--run", str(trained_run), "--out", str(tmp_path / "q"), "--steps", "2", "--device", "cpu",
            "--limit", "6", "--seed", "2", "--json"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    again = runner.invoke(app, [*args, "--resume"])  # nothing stopped: explains the same sample again
    assert again.exit_code == 0, again.output
    assert (pd.read_json(io.StringIO(first.stdout))["path"].tolist()
            == pd.read_json(io.StringIO(again.stdout))["path"].tolist())
    assert len(pd.read_json(io.StringIO(first.stdout))) == 6


def test_lr_find_raises_no_fastai_shadowing_warning(synth_data, tmp_path):
    import warnings

    from herlev_fa import DataConfig, ModelConfig, TrainConfig, lr_find

    cfg = TrainConfig(DataConfig(synth_data, size=32, bs=16, folds=2), ModelConfig("test_resnet", pretrained=False),
                      device="cpu", quiet=True)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        lr, plot = lr_find(cfg, tmp_path)
    assert 1e-7 < lr < 10 and plot.is_file()
    assert not [w for w in caught if "shadowing" in str(w.message)], [str(w.message) for w in caught]

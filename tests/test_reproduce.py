"""`herlev reproduce`: the three heads on identical folds, the paper's numbers beside ours, resumable.

One module fixture runs the command twice through the CLI: killed at the 4th fold run, then
resumed. Later tests read what it left; the resume-after-deletion test works on a copy.
"""

import csv
import importlib
import json
import math
import re
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

import herlev_cli.reproduce  # noqa: F401  registers the command on the app
from helpers import drawn_png, killed_cli
from herlev_cli.main import app
from herlev_fa.config import POSTER_POLICY, DataConfig, ModelConfig, TrainConfig
from herlev_fa.errors import HerlevError
from herlev_fa.metrics import SCALAR_METRICS
from herlev_fa.training.loop import summarize

# the module itself (`herlev_fa.reproduction` may be rebound to the function by the package's exports)
repro = importlib.import_module("herlev_fa.reproduction")
TRAIN_FOLD = repro.train_fold

runner = CliRunner()
HEADS = ("cls", "reg", "cls_reg")
FOLD_RUNS = [(h, k) for h in HEADS for k in (0, 1)]
WIDE = {"COLUMNS": "200"}  # the table on one line per row, whatever the terminal
# the paper's Table, per metric row: Cls, Reg, Cls+Reg ('–': not reported)
PAPER_ROWS = {
    "accuracy (%)": ("67.6", "58.2", "72.6"),
    "binary accuracy (%)": ("90.3", "89.3", "95.0"),
    "AUC-ROC": ("0.90", "–", "0.94"),
    "MSE": ("–", "0.71", "0.59"),
    "quadratic kappa": ("–", "–", "–"),
}
METRIC_OF = {"accuracy (%)": "accuracy", "binary accuracy (%)": "binary_accuracy", "AUC-ROC": "auc", "MSE": "mse",
             "quadratic kappa": "kappa"}


def _args(data: Path, out: Path, device: str, epochs: int = 1) -> list[str]:
    return ["reproduce", "--data", str(data), "--arch", "test_resnet", "--no-pretrained", "--folds", "2",
            "--epochs", str(epochs), "--size", "32", "--bs", "32", "--seed", "0", "--device", device,
            "--out", str(out), "--quiet"]


def _library_config(data: Path, out: Path, device: str) -> "repro.ReproduceConfig":
    """The same reproduction as `_args` builds, through the library."""
    return repro.ReproduceConfig(TrainConfig(DataConfig(data, size=32, folds=2, seed=0, bs=32, policy=POSTER_POLICY),
                                             ModelConfig("test_resnet", pretrained=False), epochs=1, device=device,
                                             quiet=True), out=out)


def _mtimes(folder: Path) -> dict[str, int]:
    return {str(p): p.stat().st_mtime_ns for p in sorted(folder.rglob("*")) if p.is_file()}


def _cells(line: str) -> list[str]:
    return [c.strip() for c in re.split(r"[│┃|]", line)[1:-1]]


def _ours(values: list[float], percent: bool) -> str:
    m, s = np.mean(values), np.std(values)
    return f"{100 * m:.1f} ± {100 * s:.1f}" if percent else f"{m:.2f} ± {s:.2f}"


def _fold_metrics(out: Path) -> dict[tuple[str, int], dict]:
    return {(h, k): json.loads((out / h / f"fold{k}" / "metrics.json").read_text()) for h, k in FOLD_RUNS}


@dataclass
class Resumed:
    out: Path
    killed: object  # CliRunner result of the killed call
    resumed: object  # ... of the rerun
    calls_killed: list[tuple[str, int]]
    calls_resumed: list[tuple[str, int]]
    finished_before: dict[str, int]  # file -> mtime of the fold runs finished before the kill


class Counting:
    """Stands in for `train_fold`: records (head, fold); with `kill_at`, dies at that call like a killed process."""

    def __init__(self, kill_at: int | None = None):
        self.real, self.kill_at, self.calls = TRAIN_FOLD, kill_at, []

    def __call__(self, cfg, data, fold, run_dir, device):
        self.calls.append((cfg.model.head, fold))
        if len(self.calls) == self.kill_at:
            run_dir.mkdir(parents=True)
            (run_dir / "log.csv").write_text("epoch,train_loss\n0,1.5\n")  # what a killed run leaves
            raise KeyboardInterrupt
        return self.real(cfg, data, fold, run_dir, device)


@pytest.fixture(scope="module")
def resumed(synth_data, tmp_path_factory, device) -> Resumed:
    out = tmp_path_factory.mktemp("reproduce") / "out"
    with pytest.MonkeyPatch.context() as mp:
        killer = Counting(kill_at=4)
        mp.setattr(repro, "train_fold", killer)
        killed = runner.invoke(app, _args(synth_data, out, device), env=WIDE)
        finished = {}
        for head, fold in killer.calls[:3]:
            finished.update(_mtimes(out / head / f"fold{fold}"))
        counter = Counting()
        mp.setattr(repro, "train_fold", counter)
        again = runner.invoke(app, _args(synth_data, out, device), env=WIDE)
    assert again.exit_code == 0, again.output
    return Resumed(out, killed, again, killer.calls, counter.calls, finished)


def test_a_killed_reproduction_resumes_without_retraining_finished_runs(resumed):
    assert resumed.killed.exit_code == 130 and "interrupted" in resumed.killed.output
    assert resumed.calls_killed == [("cls", 0), ("cls", 1), ("reg", 0), ("reg", 1)]
    assert resumed.calls_resumed == [("reg", 1), ("cls_reg", 0), ("cls_reg", 1)]
    assert len(resumed.finished_before) >= 3 * 9
    assert {f: m for f, m in _mtimes(resumed.out).items() if f in resumed.finished_before} == resumed.finished_before
    redone = resumed.out / "reg" / "fold1"
    assert (redone / "herlev.json").is_file()
    assert len(pd.read_csv(redone / "log.csv")) == 1  # the killed run's leftovers were replaced, not appended to
    assert "trained 3 fold run(s), reused 3 finished before" in resumed.resumed.output


def test_every_head_trains_on_the_same_folds_and_schedule(resumed):
    folds = [pd.read_csv(resumed.out / h / f"fold{k}" / "folds.csv") for h, k in FOLD_RUNS]
    assert all(f.equals(folds[0]) for f in folds) and sorted(folds[0]["fold"].unique()) == [0, 1]
    configs = {}
    for head, fold in FOLD_RUNS:
        meta = json.loads((resumed.out / head / f"fold{fold}" / "herlev.json").read_text())
        assert (meta["head"], meta["fold"]) == (head, fold)
        config = meta["config"]
        assert config["model"].pop("head") == head and config.pop("fold") == fold
        for key in ("out", "name"):
            config.pop(key)
        configs[(head, fold)] = config
    first = configs[("cls", 0)]
    assert all(c == first for c in configs.values())
    assert first["epochs"] == 1 and first["data"]["seed"] == 0 and first["model"]["arch"] == "test_resnet"


def test_table_puts_the_papers_numbers_beside_ours(resumed):
    metrics = _fold_metrics(resumed.out)
    lines = resumed.resumed.output.splitlines()
    header = next(line for line in lines if "metric" in line)
    assert _cells(header) == ["metric", "cls", "paper", "reg", "paper", "cls_reg", "paper"]
    for label, paper in PAPER_ROWS.items():
        row = _cells(next(line for line in lines if _cells(line)[:1] == [label]))
        name = METRIC_OF[label]
        ours = [_ours([metrics[(h, k)][name] for k in (0, 1)], percent="%" in label) for h in HEADS]
        assert row == [label, ours[0], paper[0], ours[1], paper[1], ours[2], paper[2]]
    for name in ("big_mistakes", "normal_cis", "sens_at_spec95", "ece"):  # beside them, not in the paper
        label = repro.COLUMNS[name]
        row = _cells(next(line for line in lines if _cells(line)[:1] == [label]))
        ours = [repro.ours_cell(name, summarize([metrics[(h, k)] for k in (0, 1)])[name]) for h in HEADS]
        assert row == [label, ours[0], "–", ours[1], "–", ours[2], "–"]


def test_results_md_has_every_head_and_column_with_the_paper(resumed):
    metrics = _fold_metrics(resumed.out)
    lines = (resumed.out / "results.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| head"))
    assert _cells(header) == ["head", "accuracy (%)", "paper", "binary accuracy (%)", "paper", "AUC-ROC", "paper",
                              "MSE", "paper", "quadratic kappa", "paper", "2+ levels off (%)", "paper",
                              "normal↔CIS (cells)", "paper", "normal↔severe (cells)", "paper",
                              "screening accuracy (%)", "paper", "sensitivity (%)",
                              "paper", "specificity (%)", "paper", "sens. at 95% spec. (%)", "paper",
                              "spec. at 95% sens. (%)", "paper", "ECE", "paper"]
    for i, head in enumerate(HEADS):
        row = _cells(next(line for line in lines if line.startswith(f"| {head} |")))
        expected = [head]
        for label, paper in PAPER_ROWS.items():
            values = [metrics[(head, k)][METRIC_OF[label]] for k in (0, 1)]
            expected += [_ours(values, percent="%" in label), paper[i]]
        for name in SCALAR_METRICS[len(PAPER_ROWS):]:  # not in the paper
            expected += [repro.ours_cell(name, summarize([metrics[(head, k)] for k in (0, 1)])[name]), "–"]
        assert row == expected


def test_results_csv_equals_each_fold_runs_metrics(resumed):
    with open(resumed.out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))  # Python's float() reads the written repr back exactly
    assert [(r["head"], int(r["fold"])) for r in rows] == FOLD_RUNS
    metrics = _fold_metrics(resumed.out)
    for row in rows:
        m = metrics[(row["head"], int(row["fold"]))]
        for name in SCALAR_METRICS:  # the big mistakes, operating points and calibration too
            expected = math.nan if m[name] is None else m[name]  # metrics.json is strict JSON: null for NaN
            assert float(row[name] or "nan") == pytest.approx(expected, rel=0, abs=0, nan_ok=True)  # NaN: empty cell


def test_pooled_figures_and_metrics(resumed):
    metrics = _fold_metrics(resumed.out)
    drawn_png(resumed.out / "comparison.png", (1700, 2100), (380, 500), colours=[(31, 119, 180), (255, 127, 14)])
    for head in HEADS:
        drawn_png(resumed.out / head / "confusion_matrix.png", (650, 900), (650, 900))
        drawn_png(resumed.out / head / "score_distribution.png", (650, 950), (400, 600))
        pooled = json.loads((resumed.out / head / "pooled_metrics.json").read_text())
        # predictions read back from the saved weights agree with those made at the end of training
        summed = np.sum([metrics[(head, k)]["confusion_matrix"] for k in (0, 1)], axis=0)
        assert pooled["n"] == 168 and np.array_equal(pooled["confusion_matrix"], summed)
    assert not list(resumed.out.rglob("*.tmp"))


def test_deleted_herlev_json_means_that_fold_run_is_trained_again(resumed, tmp_path, synth_data, device, monkeypatch):
    out = tmp_path / "copy"
    shutil.copytree(resumed.out, out)
    (out / "cls" / "fold1" / "herlev.json").unlink()
    before = _mtimes(out)
    counter = Counting()
    monkeypatch.setattr(repro, "train_fold", counter)
    result = repro.reproduce(_library_config(synth_data, out, device))
    assert counter.calls == [("cls", 1)] and result.trained == [out / "cls" / "fold1"]
    after = _mtimes(out)
    kept = [f for f in before if ("/fold" in f and "/cls/fold1/" not in f) or f.endswith("reproduce.json")]
    assert kept and all(after[f] == before[f] for f in kept)
    assert (out / "cls" / "fold1" / "herlev.json").is_file()
    assert result.metrics["cls"][1] == json.loads((out / "cls" / "fold1" / "metrics.json").read_text())


def test_rerun_with_other_settings_is_refused(resumed, synth_data, device, monkeypatch):
    before = _mtimes(resumed.out)
    counter = Counting()
    monkeypatch.setattr(repro, "train_fold", counter)
    result = runner.invoke(app, _args(synth_data, resumed.out, device, epochs=2))
    assert result.exit_code == 2
    assert result.output.startswith("error: ") and "epochs: 1 there, 2 now" in result.output
    assert "Traceback" not in result.output and counter.calls == []
    assert _mtimes(resumed.out) == before


def test_a_reproduction_from_before_a_setting_existed_resumes_at_its_default(resumed, tmp_path, synth_data, device,
                                                                             monkeypatch):
    out = tmp_path / "old"
    shutil.copytree(resumed.out, out)
    claim = json.loads((out / "reproduce.json").read_text())
    for key in ("mse_warmup", "val_split"):  # what a record of an earlier version lacks
        del claim["settings"][key]
    (out / "reproduce.json").write_text(json.dumps(claim))
    meta_path = out / "cls" / "fold0" / "herlev.json"
    meta = json.loads(meta_path.read_text())
    del meta["config"]["mse_warmup"]
    meta_path.write_text(json.dumps(meta))
    counter = Counting()
    monkeypatch.setattr(repro, "train_fold", counter)
    result = repro.reproduce(_library_config(synth_data, out, device))
    assert counter.calls == [] and result.trained == []
    with pytest.raises(HerlevError, match="keep: 'last' there, 'best' now"):
        cfg = _library_config(synth_data, out, device)
        repro.reproduce(repro.ReproduceConfig(replace(cfg.train, keep="best"), out=out))


def test_a_fold_run_from_other_settings_is_refused(resumed, tmp_path, synth_data, device):
    out = tmp_path / "copy"
    shutil.copytree(resumed.out, out)
    meta_path = out / "reg" / "fold0" / "herlev.json"
    meta = json.loads(meta_path.read_text())
    meta["config"]["wd"] = 0.5
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(HerlevError, match="was not trained with this reproduction's settings"):
        repro.reproduce(_library_config(synth_data, out, device))


def test_output_folder_holding_something_else_is_refused(synth_data, tmp_path, device):
    (tmp_path / "notes.txt").write_text("mine")
    result = runner.invoke(app, _args(synth_data, tmp_path, device))
    assert result.exit_code == 2 and "holds no reproduce.json" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]


def test_heads_must_be_known_and_distinct(synth_data):
    train = TrainConfig(DataConfig(synth_data), ModelConfig("test_resnet", pretrained=False))
    for heads in ((), ("cls", "cls"), ("cls", "ordinal")):
        with pytest.raises(HerlevError, match="heads"):
            repro.ReproduceConfig(train, heads=heads)
    assert repro.ReproduceConfig(train).root == Path("runs") / "reproduce-test_resnet"


def test_chosen_heads_schedule_and_kept_epoch_reach_every_fold_run(synth_data, tmp_path, device):
    # what a loss-weight sweep runs: one head, its own lr / wd / lambda, evaluated at the last epoch
    out = tmp_path / "sweep"
    args = _args(synth_data, out, device, epochs=2) + ["--head", "cls_reg", "--head", "reg", "--mse-weight", "0.25",
                                                       "--lr", "2e-3", "--wd", "0.01", "--keep", "last"]
    result = runner.invoke(app, args, env=WIDE)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["cls_reg", "reg"]
    rows = pd.read_csv(out / "results.csv")
    assert list(zip(rows["head"], rows["fold"])) == [("cls_reg", 0), ("cls_reg", 1), ("reg", 0), ("reg", 1)]
    assert (rows["best_epoch"] == 1).all()  # the last of 2 epochs
    for head, fold in zip(rows["head"], rows["fold"]):
        config = json.loads((out / head / f"fold{fold}" / "herlev.json").read_text())["config"]
        assert (config["lr"], config["wd"], config["keep"], config["model"]["mse_weight"]) == (2e-3, 0.01, "last", 0.25)
    settings = json.loads((out / "reproduce.json").read_text())["settings"]
    assert settings["heads"] == ["cls_reg", "reg"] and settings["keep"] == "last"
    md = (out / "results.md").read_text()
    assert "λ (mse weight) 0.25" in md and "weights kept: last epoch" in md and "| cls |" not in md
    header = next(line for line in result.output.splitlines() if "metric" in line)
    assert _cells(header) == ["metric", "cls_reg", "paper", "reg", "paper"]


def test_an_interrupted_fold_continues_from_its_checkpoint(synth_data, tmp_path, device):
    """SIGKILL a reproduction in the first fold run's 2nd epoch; the rerun continues it from its first checkpoint
    and ends where an uninterrupted reproduction ends."""
    from herlev_fa.training import checkpoint

    args = ["reproduce", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained", "--folds", "2",
            "--epochs", "3", "--size", "32", "--bs", "32", "--seed", "0", "--device", device, "--quiet",
            "--checkpoint-every", "0", "--heads", "cls,reg"]  # the killed head and one trained after it
    reference = runner.invoke(app, [*args, "--out", str(tmp_path / "ref")], env=WIDE)
    assert reference.exit_code == 0, reference.output

    first = tmp_path / "out" / "cls" / "fold0"
    assert killed_cli([*args, "--out", str(tmp_path / "out")], epoch=1)  # in the 2nd epoch of the first fold run
    resume = checkpoint.find(first)
    assert resume is not None and resume.epoch == 0 and not (first / "herlev.json").exists()

    again = runner.invoke(app, [*args, "--out", str(tmp_path / "out")], env=WIDE)
    assert again.exit_code == 0, again.output
    assert not (first / "checkpoint").exists()
    for head, fold in [(h, k) for h in ("cls", "reg") for k in (0, 1)]:
        ref = json.loads((tmp_path / "ref" / head / f"fold{fold}" / "metrics.json").read_text())
        got = json.loads((tmp_path / "out" / head / f"fold{fold}" / "metrics.json").read_text())
        assert got["confusion_matrix"] == ref["confusion_matrix"], (head, fold)
        assert got["mse"] == pytest.approx(ref["mse"], abs=1e-5)
    assert len(pd.read_csv(first / "log.csv")) == 3

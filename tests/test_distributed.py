"""Data-parallel training: two CPU processes (gloo, started by torchrun) leave the same run folder as one.

One launch covers both kinds of fit: a fine-tune (a frozen epoch, then unfrozen ones) whose learning rate comes
from lr_find, which each process runs on its own (fastai would otherwise wait for the other to save)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa import write_synthetic
from herlev_fa.runs import load_run

EPOCHS = 2
FOLD = 1  # 31 of the 63 cells: an odd number, so the two shards need one padding image


def _args(data, out, name: str, weights: Path) -> list[str]:
    return ["train", "--data", str(data), "--arch", "test_resnet", "--weights", str(weights), "--head", "cls_reg",
            "--size", "32", "--epochs", str(EPOCHS), "--bs", "8", "--folds", "2", "--fold", str(FOLD), "--lr", "auto",
            "--device", "cpu", "--seed", "0", "--out", str(out), "--name", name, "--quiet"]


def _files(run) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*")}


def _launch(args: list[str]) -> None:
    """`herlev` + `args` as two CPU processes under torchrun (--standalone: a free port of its own)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
              "-m", "herlev_cli.main", *args]
    proc = subprocess.run(launch, check=False, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def runs(tmp_path_factory, trained_run):
    """(single-process run, two-process run) of the same fine-tune of `trained_run` on 63 synthetic cells."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_synthetic(root / "data", per_class=9, size=32, seed=0)
    weights = trained_run / "model.safetensors"
    single = CliRunner().invoke(app, _args(data, root, "single", weights))
    assert single.exit_code == 0, single.output
    _launch(_args(data, root, "ddp", weights))
    return root / "single", root / "ddp"


def test_two_processes_write_the_same_files_once(runs):
    single, ddp = runs
    files = _files(ddp)
    assert files == _files(single)
    assert "herlev.json" in files and "model.safetensors" in files
    assert not [f for f in files if f.startswith(".") or f.endswith(".tmp") or "checkpoint" in f]
    run = load_run(ddp)  # a valid sidecar and weights that fit it
    assert run.record.fold == FOLD and run.record.config["epochs"] == EPOCHS
    assert run.record.processes == 2 and load_run(single).record.processes == 1  # effective batch 16 vs 8
    assert pd.read_csv(ddp / "folds.csv").equals(pd.read_csv(single / "folds.csv"))


def test_final_metrics_count_every_held_out_image(runs):
    _, ddp = runs
    folds = pd.read_csv(ddp / "folds.csv")
    held = folds[folds["fold"] == FOLD]
    assert len(held) % 2 == 1
    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["n"] == len(held) and sum(map(sum, metrics["confusion_matrix"])) == len(held)
    preds = pd.read_csv(ddp / "predictions.csv")
    assert sorted(preds["rel"]) == sorted(held["rel"])


def test_epoch_metrics_are_gathered_over_the_whole_fold(runs):
    _, ddp = runs
    log = pd.read_csv(ddp / "log.csv")
    assert list(log["epoch"]) == list(range(1 + EPOCHS))  # the frozen epoch, then the unfrozen ones
    # the best epoch's row was computed from the same weights as metrics.json: equal only if the
    # per-epoch metrics saw every held-out image once (not one process's shard, not the padding)
    meta = json.loads((ddp / "herlev.json").read_text())
    metrics = json.loads((ddp / "metrics.json").read_text())
    best = log.iloc[meta["best_epoch"]]
    for name in ("accuracy", "auc", "mse", "kappa"):
        assert best[name] == pytest.approx(metrics[name], rel=1e-4, abs=1e-6), name
    # loss components summed over both processes, like the loss
    assert (log["valid_loss"] - (log["valid_ce"] + log["valid_mse"])).abs().max() < 1e-4


def test_the_learning_rate_comes_from_lr_find_in_each_process(runs):
    single, ddp = runs
    lrs = [json.loads((run / "herlev.json").read_text())["lr"] for run in (single, ddp)]
    assert all(1e-7 < lr < 1 for lr in lrs) and 3e-3 not in lrs  # found, not the default

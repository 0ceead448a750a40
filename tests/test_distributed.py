"""Data-parallel training: two CPU processes (gloo, started by torchrun) leave the same run folder as one."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa import write_synthetic
from herlev_fa.runs import load_run

EPOCHS = 2
FOLD = 1  # 31 of the 63 cells: an odd number, so the two shards need one padding image


def _args(data, out, name: str, start: tuple[str, ...] = ("--no-pretrained",), lr: str = "3e-3",
          epochs: int = EPOCHS) -> list[str]:
    return ["train", "--data", str(data), "--arch", "test_resnet", *start, "--head", "cls_reg", "--size", "32",
            "--epochs", str(epochs), "--bs", "8", "--folds", "2", "--fold", str(FOLD), "--lr", lr,
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
def runs(tmp_path_factory):
    """(single-process run, two-process run) of the same command on 63 synthetic cells."""
    root = tmp_path_factory.mktemp("ddp")
    data = write_synthetic(root / "data", per_class=9, size=32, seed=0)
    single = CliRunner().invoke(app, _args(data, root, "single"))
    assert single.exit_code == 0, single.output
    _launch(_args(data, root, "ddp"))
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
    assert len(log) == EPOCHS and list(log["epoch"]) == list(range(EPOCHS))
    # the best epoch's row was computed from the same weights as metrics.json: equal only if the
    # per-epoch metrics saw every held-out image once (not one process's shard, not the padding)
    meta = json.loads((ddp / "herlev.json").read_text())
    metrics = json.loads((ddp / "metrics.json").read_text())
    best = log.iloc[meta["best_epoch"]]
    for name in ("accuracy", "auc", "mse", "kappa"):
        assert best[name] == pytest.approx(metrics[name], rel=1e-4, abs=1e-6), name
    # loss components summed over both processes, like the loss
    assert (log["valid_loss"] - (log["valid_ce"] + log["valid_mse"])).abs().max() < 1e-4


def test_fine_tuning_with_lr_find_runs_both_stages(runs):
    # lr_find runs in each process on its own (fastai would otherwise wait for the other to save)
    single, ddp = runs
    _launch(_args(single.parent / "data", single.parent, "ft", start=("--weights", str(ddp / "model.safetensors")),
                  lr="auto", epochs=1))
    ft = single.parent / "ft"
    assert _files(ft) == _files(ddp)
    assert len(pd.read_csv(ft / "log.csv")) == 2  # the frozen epoch, then one unfrozen
    meta = json.loads((ft / "herlev.json").read_text())
    assert 1e-7 < meta["lr"] < 1 and meta["lr"] != 3e-3

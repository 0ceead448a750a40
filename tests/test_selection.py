"""Honest model selection: the held-out fold is never used to choose the kept weights."""

import json

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from herlev_cli.main import app
from herlev_fa.config import DataConfig, TrainConfig
from herlev_fa.data.items import inner_split
from herlev_fa.errors import HerlevError
from herlev_fa.runs import selection
from herlev_fa.training import checkpoint


def _items(n_per_class=(20, 12, 9, 30, 5), folds: int = 4) -> pd.DataFrame:
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    return pd.DataFrame({"y": y, "fold": np.arange(len(y)) % folds})


@pytest.mark.parametrize("fold", [0, 3])
def test_inner_split_is_outside_the_held_out_fold_stratified_and_seeded(fold):
    items = _items()
    mask = inner_split(items, fold, 0.2, seed=1)
    train = items["fold"].to_numpy() != fold
    assert not (mask & ~train).any()  # never a held-out image
    counts = np.bincount(items["y"][mask], minlength=5)
    expected = np.maximum(1, np.round(0.2 * np.bincount(items["y"][train], minlength=5)))
    assert counts.tolist() == expected.tolist()  # each class in proportion
    assert np.array_equal(mask, inner_split(items, fold, 0.2, seed=1))  # a resumed run draws it again
    assert not np.array_equal(mask, inner_split(items, fold, 0.2, seed=2))


def test_inner_split_holds_every_class_even_when_the_share_is_tiny():
    items = _items()
    mask = inner_split(items, 0, 0.01, seed=0)
    assert sorted(np.unique(items["y"][mask])) == [0, 1, 2, 3, 4]


def test_selection_names_the_rule_of_new_and_old_runs():
    assert selection({"keep": "last"}) == "last epoch"
    assert selection({"keep": "best", "val_split": 0.15}) == "best epoch on an inner 15% split of the training folds"
    # a run saved before the inner split existed chose on its held-out fold, and says so
    assert "held-out fold" in selection({"keep": "best"}) and "optimistic" in selection({"keep": "best"})
    assert "held-out fold" in selection({})


def test_val_split_out_of_range_is_one_clear_error(tmp_path):
    with pytest.raises(HerlevError, match=r"^val_split 1.0 is out of range"):
        TrainConfig(DataConfig(tmp_path), keep="best", val_split=1.0, out=tmp_path / "runs")


def test_resume_settings_ignore_the_inner_split_when_the_last_epoch_is_kept():
    old_last = {"keep": "last", "epochs": 3}  # an older record: no val_split, no policy
    new_last = TrainConfig(DataConfig("d"), keep="last", epochs=3, out="runs").to_json()
    assert checkpoint.settings(old_last)["val_split"] is None
    assert checkpoint.settings(new_last)["val_split"] is None
    old_best = checkpoint.settings({"keep": "best"})
    new_best = checkpoint.settings(TrainConfig(DataConfig("d"), keep="best", out="runs").to_json())
    assert old_best["val_split"] is None and new_best["val_split"] == 0.15  # not the same run: never resumed as one


def test_keep_best_validates_on_the_inner_split_and_scores_the_held_out_fold(synth_data, tmp_path, device):
    result = CliRunner().invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                      "--head", "cls", "--size", "32", "--epochs", "2", "--bs", "16", "--seed", "0",
                                      "--keep", "best", "--val-split", "0.25", "--device", device,
                                      "--out", str(tmp_path), "--name", "r", "--quiet"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "r"
    folds = pd.read_csv(run / "folds.csv")
    n_held = int((folds["fold"] == 0).sum())
    predictions = pd.read_csv(run / "predictions.csv")
    assert len(predictions) == n_held and set(predictions["fold"]) == {0}  # scored on the held-out fold
    metrics = json.loads((run / "metrics.json").read_text())
    meta = json.loads((run / "herlev.json").read_text())
    assert metrics["n"] == n_held
    assert metrics["kept"] == meta["kept"] == "best epoch on an inner 25% split of the training folds"
    # the epoch table's validation is the inner split: its accuracy is a multiple of 1/|inner split|
    inner = sum(max(1, round(0.25 * n)) for n in folds[folds["fold"] != 0]["label"].value_counts())
    accuracy = pd.read_csv(run / "log.csv")["accuracy"].to_numpy()
    assert np.allclose(accuracy * inner, np.round(accuracy * inner), atol=1e-6)
    assert not np.allclose(accuracy * n_held, np.round(accuracy * n_held), atol=1e-6) or inner == n_held

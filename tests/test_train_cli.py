"""End to end through the CLI: synth -> train -> evaluate -> lr-find, and the run folder contract."""

import json

import numpy as np
import pandas as pd
import pytest
import timm
import torch
from typer.testing import CliRunner

from helpers import drawn_png
from herlev_cli.main import app
from herlev_fa.runs import load_run

runner = CliRunner()


def test_synth_command_writes_the_herlev_layout(tmp_path):
    result = runner.invoke(app, ["synth", str(tmp_path / "s"), "--per-class", "3", "--size", "32", "--seed", "1"])
    assert result.exit_code == 0, result.output
    assert "21 synthetic cells" in result.output
    assert len(list((tmp_path / "s").glob("*/*.BMP"))) == 21
    assert len(list((tmp_path / "s").glob("*/*-d.bmp"))) == 21


def test_train_writes_a_complete_run_that_learned(trained_run):
    files = {p.name for p in trained_run.iterdir()}
    assert {"model.safetensors", "config.json", "herlev.json", "folds.csv", "log.csv", "metrics.json",
            "confusion_matrix.png", "score_distribution.png", "training_curves.png"} <= files
    assert not [f for f in files if f.endswith(".tmp")]
    drawn_png(trained_run / "confusion_matrix.png", (650, 900), (650, 900))
    drawn_png(trained_run / "score_distribution.png", (650, 950), (400, 600))
    drawn_png(trained_run / "training_curves.png", (850, 1100), (350, 500), colours=[(31, 119, 180), (255, 127, 14)])
    metrics = json.loads((trained_run / "metrics.json").read_text())
    # majority class (the three merged normal folders) is 3/7 = 0.43 of the data
    assert metrics["accuracy"] > 0.6, metrics
    assert metrics["binary_accuracy"] > 0.8 and metrics["auc"] > 0.85
    assert metrics["n"] == 42  # fold 0 of 168 images
    log = pd.read_csv(trained_run / "log.csv")
    assert len(log) == 15
    assert {"train_loss", "valid_loss", "accuracy", "auc", "kappa", "train_ce", "train_mse", "valid_ce",
            "valid_mse"} <= set(log)
    # the loss is CE + 1.0 * MSE, component by component (validation loss is a plain mean, like the parts)
    assert np.allclose(log["valid_loss"], log["valid_ce"] + log["valid_mse"], rtol=1e-4)
    assert log["train_loss"].iloc[-1] < log["train_loss"].iloc[0]


def test_run_sidecar_and_folds(trained_run, synth_data):
    meta = json.loads((trained_run / "herlev.json").read_text())
    assert meta["task"]["classes"][0] == "normal" and meta["head"] == "cls_reg"
    assert meta["image_size"] == 48 and meta["mean"] == [0.5, 0.5, 0.5]
    folds = pd.read_csv(trained_run / "folds.csv")
    assert len(folds) == 168 and sorted(folds["fold"].unique()) == [0, 1, 2, 3]
    assert folds[folds.fold == 0]["label"].value_counts().to_dict() == {
        "normal": 18, "light_dysplastic": 6, "moderate_dysplastic": 6, "severe_dysplastic": 6, "carcinoma_in_situ": 6}
    assert (synth_data / folds["rel"].iloc[0]).is_file()
    preds = pd.read_csv(trained_run / "predictions.csv")
    classes = meta["task"]["classes"]
    assert len(preds) == 42 and (preds["y"] == preds["label"].map(classes.index)).all()
    assert set(preds["rel"]) == set(folds[folds.fold == 0]["rel"])
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert (preds["pred"] == preds["y"]).mean() == pytest.approx(metrics["accuracy"])


def test_checkpoint_round_trip_and_plain_timm(trained_run):
    run = load_run(trained_run)
    assert load_run(run) is run  # a loaded run passes through: every function taking a run takes either
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        ours = run.model(x)
        plain = timm.create_model("test_resnet", num_classes=5,
                                  checkpoint_path=str(trained_run / "model.safetensors")).eval()(x)
        local = timm.create_model(f"local-dir:{trained_run}", pretrained=True).eval()(x)
    assert ours.shape == (2, 6)
    assert torch.allclose(ours[:, :5], plain, atol=1e-5) and torch.allclose(plain, local, atol=1e-6)
    assert torch.allclose(ours[:, 5], (plain.softmax(1) * torch.arange(5.0)).sum(1), atol=1e-5)


def test_evaluate_reproduces_training_metrics_and_writes_files(trained_run, tmp_path):
    train_metrics = json.loads((trained_run / "metrics.json").read_text())
    out = tmp_path / "ev"
    result = runner.invoke(app, ["evaluate", str(trained_run), "--out", str(out), "--device", "cpu", "--json",
                                 "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["accuracy"] == pytest.approx(train_metrics["accuracy"])
    assert metrics["confusion_matrix"] == train_metrics["confusion_matrix"]
    assert {p.name for p in out.iterdir()} == {"metrics.json", "confusion_matrix.png", "score_distribution.png",
                                               "roc.png", "reliability.png"}


def test_evaluate_on_another_folder(trained_run, tmp_path):
    runner.invoke(app, ["synth", str(tmp_path / "other"), "--per-class", "4", "--size", "40", "--seed", "5"])
    result = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(tmp_path / "other"), "--device", "cpu",
                                 "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads((trained_run / "eval-other" / "metrics.json").read_text())
    assert metrics["n"] == 28 and sum(map(sum, metrics["confusion_matrix"])) == 28


def test_lr_find_writes_plot_and_prints_suggestion(synth_data, tmp_path):
    result = runner.invoke(app, ["lr-find", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                 "--size", "32", "--bs", "16", "--out", str(tmp_path), "--quiet"])
    assert result.exit_code == 0, result.output
    lr = float(result.output.split("suggested learning rate:")[1].split()[0])
    assert 1e-7 < lr < 10
    drawn_png(tmp_path / "lr_find.png", (450, 700), (350, 500), colours=[(31, 119, 180)])
    assert not (tmp_path / "models").exists()


def test_fold_all_writes_every_fold_and_a_summary(synth_data, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                 "--head", "reg", "--folds", "2", "--fold", "all", "--epochs", "1", "--size", "32",
                                 "--bs", "32", "--out", str(tmp_path), "--name", "cv", "--json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["runs"] == [str(tmp_path / "cv" / "fold0"), str(tmp_path / "cv" / "fold1")]
    assert printed["summary"]["mse"]["folds"] == [m["mse"] for m in printed["metrics"]]
    summary = json.loads((tmp_path / "cv" / "cv_summary.json").read_text())
    for fold in (0, 1):
        m = json.loads((tmp_path / "cv" / f"fold{fold}" / "metrics.json").read_text())
        assert summary["mse"]["folds"][fold] == pytest.approx(m["mse"])
    assert summary["accuracy"]["mean"] == pytest.approx(np.mean(summary["accuracy"]["folds"]))
    assert "| accuracy |" in (tmp_path / "cv" / "cv_summary.md").read_text()


def test_evaluate_held_out_fold_of_moved_data_and_whole_other_folder(trained_run, synth_data, tmp_path):
    import shutil

    moved = tmp_path / "moved"
    shutil.copytree(synth_data, moved)
    result = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(moved), "--split", "valid",
                                 "--out", str(tmp_path / "ev"), "--json", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)
    assert metrics["n"] == 42 and metrics["data"] == "held-out fold 0"
    result = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(moved), "--json",
                                 "--out", str(tmp_path / "ev2"), "--bootstrap", "0"])
    assert json.loads(result.output)["n"] == 168


def test_fine_tune_from_a_previous_run_with_lr_auto(trained_run, synth_data, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--size", "48",
                                 "--weights", str(trained_run / "model.safetensors"), "--lr", "auto", "--epochs", "1",
                                 "--bs", "16", "--out", str(tmp_path), "--name", "ft", "--quiet"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "ft" / "herlev.json").read_text())
    assert 1e-7 < meta["lr"] < 1 and meta["lr"] != 1e-3  # lr_find's suggestion, not the default
    log = pd.read_csv(tmp_path / "ft" / "log.csv")
    assert len(log) == 2  # fine_tune: one frozen epoch, then one unfrozen
    # started from trained weights: already far better than chance after the frozen epoch
    assert log["accuracy"].iloc[0] > 0.6


def test_commands_default_to_the_newest_run_and_say_so(trained_run, synth_data, tmp_path, monkeypatch):
    import herlev_cli.app

    monkeypatch.setattr(herlev_cli.app, "DEFAULT_RUNS", trained_run.parent)
    result = runner.invoke(app, ["evaluate", "--out", str(tmp_path / "ev"), "--device", "cpu", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    assert f"using the newest run: {trained_run}" in result.output
    img = next(synth_data.glob("light_dysplastic/*.BMP"))
    result = runner.invoke(app, ["predict", str(img), "--out", str(tmp_path / "p.csv"), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(pd.read_csv(tmp_path / "p.csv")) == 1
    monkeypatch.setattr(herlev_cli.app, "DEFAULT_RUNS", tmp_path / "empty")
    result = runner.invoke(app, ["evaluate"])
    assert result.exit_code == 2 and "no finished run under" in result.output


def test_data_defaults_to_env_then_local_folder(synth_data, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HERLEV_DATA", raising=False)
    args = ["lr-find", "--arch", "test_resnet", "--no-pretrained", "--size", "32", "--bs", "16", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert "pass --data DIR, set HERLEV_DATA, or put the data in data/herlev/" in result.output
    monkeypatch.setenv("HERLEV_DATA", str(synth_data))
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lr_find.png").is_file()


@pytest.mark.parametrize("last", [False, True])
def test_keep_best_restores_the_lowest_validation_loss_and_keep_last_does_not(last):
    from fastai.test_utils import synth_learner
    from fastai.torch_core import set_seed

    from herlev_fa.training.callbacks import KeepBest

    set_seed(0)
    learn = synth_learner(n_trn=10, cbs=KeepBest(last=last))
    with learn.no_bar(), learn.no_logging():
        learn.fit(3, lr=2.0)  # diverges: the validation loss rises every epoch
    valid = [row[1] for row in learn.recorder.values]
    assert valid[0] < valid[1] < valid[2]
    keep = learn.keep_best
    learn.remove_cb(keep)
    with learn.no_bar(), learn.no_logging():
        now = learn.validate()[0]
    assert keep.best_epoch == (2 if last else 0)
    assert now == pytest.approx(valid[2] if last else valid[0], rel=1e-5)  # the weights kept


def test_keep_last_evaluates_and_saves_the_final_epoch(synth_data, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                 "--size", "32", "--epochs", "3", "--bs", "16", "--seed", "0", "--keep", "last",
                                 "--device", "cpu", "--out", str(tmp_path), "--name", "last", "--quiet"])
    assert result.exit_code == 0, result.output
    run = tmp_path / "last"
    meta = json.loads((run / "herlev.json").read_text())
    assert meta["best_epoch"] == 2 and meta["config"]["keep"] == "last"
    final = pd.read_csv(run / "log.csv").iloc[-1]
    metrics = json.loads((run / "metrics.json").read_text())
    for name in ("accuracy", "mse", "kappa"):
        assert metrics[name] == pytest.approx(final[name], rel=1e-4, abs=1e-6), name


def test_mse_warmup_ramps_lambda_over_training_and_validates_at_full_weight():
    from fastai.callback.core import Callback
    from fastai.test_utils import synth_learner
    from fastai.torch_core import set_seed
    from torch import nn

    from herlev_fa.training.callbacks import MseWarmup

    class Weighted(nn.MSELoss):  # any loss with a settable mse_weight, as SeverityLoss has
        mse_weight = 2.0

    class Record(Callback):
        order = 6  # after MseWarmup
        seen: list = []

        def before_batch(self):
            self.seen.append((self.training, self.pct_train, self.learn.loss_func.mse_weight))

    set_seed(0)
    learn = synth_learner(n_trn=8, cbs=[MseWarmup(0.5), Record()])  # 8 training batches per epoch
    learn.loss_func = Weighted()
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, lr=1e-3)
    train = [(pct, w) for training, pct, w in Record.seen if training]
    valid = [w for training, _, w in Record.seen if not training]
    assert len(train) == 16 and train[0] == (0.0, 0.0)
    for pct, w in train:
        assert w == pytest.approx(2.0 * min(1.0, pct / 0.5))
    assert [w for _, w in train][8:] == [2.0] * 8  # second half of training: the full weight
    assert valid and set(valid) == {2.0}
    assert learn.loss_func.mse_weight == 2.0  # restored after the fit


def test_mse_warmup_is_recorded_and_validation_loss_uses_the_full_weight(synth_data, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                 "--size", "32", "--epochs", "2", "--bs", "16", "--seed", "0", "--mse-weight", "0.5",
                                 "--mse-warmup", "0.5", "--head", "cls_reg", "--device", "cpu", "--out", str(tmp_path),
                                 "--name", "w", "--quiet"])
    assert result.exit_code == 0, result.output
    log = pd.read_csv(tmp_path / "w" / "log.csv")
    assert np.allclose(log["valid_loss"], log["valid_ce"] + 0.5 * log["valid_mse"], rtol=1e-4)
    meta = json.loads((tmp_path / "w" / "herlev.json").read_text())
    assert meta["config"]["mse_warmup"] == 0.5 and meta["mse_weight"] == 0.5


def test_weight_average_is_the_ema_of_the_weights_after_each_training_batch():
    from fastai.callback.core import Callback
    from fastai.test_utils import synth_learner
    from fastai.torch_core import set_seed

    from herlev_fa.training.callbacks import WeightAverage

    class Record(Callback):  # the weights at the start and after every optimiser step
        seen: list = []

        def before_fit(self):
            self.seen.append({k: v.clone() for k, v in self.learn.model.state_dict().items()})

        def after_batch(self):
            if self.training:
                self.seen.append({k: v.clone() for k, v in self.learn.model.state_dict().items()})

    set_seed(0)
    decay = 0.7
    learn = synth_learner(n_trn=4, cbs=[WeightAverage(decay), Record()])
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, lr=0.1)
    first, *steps = Record.seen
    assert len(steps) == 8  # 4 batches x 2 epochs
    expected = dict(first)
    for w in steps:
        expected = {k: decay * expected[k] + (1 - decay) * w[k] for k in w}
    last = steps[-1]
    learn.weight_average.apply()
    for k, v in learn.model.state_dict().items():
        assert torch.allclose(v, expected[k], atol=1e-6), k
        assert not torch.allclose(v, last[k]), k  # the average, not the last weights


def test_mixup_trains_on_the_mix_of_each_cells_two_losses():
    """fastai's MixUp over the severity loss: the batch loss is mean_i lerp(loss_i(partner's y), loss_i(y), lam_i),
    with the lambda MseWarmup has set, and the loss parts still logged while MixUp holds learn.loss_func."""
    from fastai.callback.core import Callback
    from fastai.callback.mixup import MixUp
    from fastai.data.core import DataLoaders
    from fastai.learner import Learner
    from fastai.torch_core import set_seed

    from herlev_fa.model.heads import AppendExpectedSeverity, get_head
    from herlev_fa.model.loss import SeverityLoss
    from herlev_fa.training.callbacks import LossParts, MseWarmup

    sev = [0.0, 1.0, 2.0, 3.0, 4.0]
    loss = SeverityLoss(get_head("cls_reg"), sev, mse_weight=0.5)

    class Record(Callback):  # each training batch's pieces, right after its loss
        order, seen = 60, []

        def after_loss(self):
            if self.training:
                self.seen.append((self.learn.pred.detach(), self.mix_up.yb1[0], self.yb[0], self.mix_up.lam,
                                  loss.mse_weight, self.learn.loss.detach()))

    set_seed(0)
    x, y = torch.randn(16, 3), torch.arange(16) % 5
    ds = list(zip(x, y))
    dls = DataLoaders.from_dsets(ds, ds, bs=8, device="cpu")
    learn = Learner(dls, torch.nn.Sequential(torch.nn.Linear(3, 5), AppendExpectedSeverity(sev)), loss_func=loss,
                    cbs=[MixUp(0.4), MseWarmup(1.0), LossParts(), Record()])
    with learn.no_bar(), learn.no_logging():
        learn.fit(2, lr=0.01)
    assert len(Record.seen) == 4 and learn.loss_func is loss  # MixUp gives the loss back after training
    assert [w for *_, w, _ in Record.seen] == pytest.approx([0.0, 0.125, 0.25, 0.375])  # the warm-up ramp, 4 steps
    for pred, y1, y0, lam, weight, got in Record.seen:
        assert not torch.equal(y1, y0) and not torch.all(lam == 1)  # the cells were mixed
        per_cell = SeverityLoss(get_head("cls_reg"), sev, mse_weight=weight)
        per_cell.reduction = "none"
        mixed = torch.lerp(per_cell(pred, y1), per_cell(pred, y0), lam).mean()
        assert got.item() == pytest.approx(mixed.item(), rel=1e-5)
        assert got.item() != pytest.approx(SeverityLoss(get_head("cls_reg"), sev, mse_weight=weight)(pred, y0).item(),
                                           rel=1e-3)
    assert {"train_ce", "train_mse", "valid_ce", "valid_mse"} <= set(learn.loss_parts.last)  # logged through the swap


def test_ema_label_smoothing_and_cutmix_reach_the_run_and_the_saved_weights_are_the_scored_ones(synth_data, tmp_path):
    result = runner.invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                 "--size", "32", "--epochs", "2", "--bs", "16", "--seed", "0", "--ema", "0.5",
                                 "--label-smoothing", "0.1", "--cutmix", "1.0", "--device", "cpu",
                                 "--out", str(tmp_path), "--name", "e", "--quiet"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "e" / "herlev.json").read_text())
    assert [meta["config"][k] for k in ("ema", "label_smoothing", "cutmix", "mixup")] == [0.5, 0.1, 1.0, 0.0]
    result = runner.invoke(app, ["evaluate", str(tmp_path / "e"), "--out", str(tmp_path / "ev"), "--device", "cpu",
                                 "--json", "--bootstrap", "0"])
    assert result.exit_code == 0, result.output
    trained, again = json.loads((tmp_path / "e" / "metrics.json").read_text()), json.loads(result.output)
    assert again["confusion_matrix"] == trained["confusion_matrix"]
    assert again["mse"] == pytest.approx(trained["mse"], rel=1e-4)


def test_balance_reaches_the_run_and_a_resume_with_other_balancing_is_refused(synth_data, tmp_path):
    args = ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained", "--size", "32",
            "--epochs", "1", "--bs", "16", "--seed", "0", "--device", "cpu", "--out", str(tmp_path), "--name", "b",
            "--quiet"]
    result = runner.invoke(app, [*args, "--balance"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "b" / "herlev.json").read_text())
    assert meta["config"]["data"]["balance"] is True
    again = runner.invoke(app, [*args, "--resume"])  # the same run without --balance: not the same settings
    assert again.exit_code != 0 and "balance: True there, False now" in again.output

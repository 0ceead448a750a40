"""Same seed, same data, CPU: identical folds and per-epoch metrics."""

import pandas as pd
from typer.testing import CliRunner

from herlev_cli.main import app


def _train(data, out, name, seed):
    result = CliRunner().invoke(app, ["train", "--data", str(data), "--arch", "test_resnet", "--no-pretrained",
                                      "--size", "32", "--epochs", "2", "--bs", "16", "--seed", str(seed),
                                      "--device", "cpu", "--out", str(out), "--name", name, "--quiet"])
    assert result.exit_code == 0, result.output
    return pd.read_csv(out / name / "log.csv"), pd.read_csv(out / name / "folds.csv")


def test_same_seed_same_folds_and_metrics(synth_data, tmp_path):
    log_a, folds_a = _train(synth_data, tmp_path, "a", seed=3)
    log_b, folds_b = _train(synth_data, tmp_path, "b", seed=3)
    log_c, folds_c = _train(synth_data, tmp_path, "c", seed=4)
    assert folds_a.equals(folds_b)
    assert not folds_a["fold"].equals(folds_c["fold"])
    numeric = ["train_loss", "valid_loss", "accuracy", "auc", "mse", "kappa", "train_ce", "valid_mse"]
    assert (log_a[numeric] - log_b[numeric]).abs().max().max() <= 1e-6
    assert (log_a["train_loss"] - log_c["train_loss"]).abs().max() > 1e-4


def test_deterministic_flag_sets_the_framework_flags():
    import torch

    from herlev_fa.training.loop import set_determinism

    try:
        set_determinism(0, deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    finally:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False

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


def test_deterministic_asks_torch_for_deterministic_kernels_with_warnings_and_cublas_space(monkeypatch):
    import os

    import torch

    from herlev_fa.training.loop import set_determinism

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)  # restored after the test, whatever happens
    for flag in ("deterministic", "benchmark"):  # fastai's set_seed changes these; put them back afterwards
        monkeypatch.setattr(torch.backends.cudnn, flag, getattr(torch.backends.cudnn, flag))
    try:
        set_determinism(0, deterministic=False)
        assert "CUBLAS_WORKSPACE_CONFIG" not in os.environ and not torch.are_deterministic_algorithms_enabled()
        set_determinism(0, deterministic=True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"  # cuBLAS needs it for deterministic GEMMs
        assert torch.are_deterministic_algorithms_enabled()
        assert torch.is_deterministic_algorithms_warn_only_enabled()  # a kernel without a deterministic twin warns
        monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
        set_determinism(0, deterministic=True)
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"  # a user's own setting is kept
    finally:
        torch.use_deterministic_algorithms(False)


def test_same_seed_same_draws_from_every_generator():
    import random

    import numpy as np
    import torch

    from herlev_fa.training.loop import set_determinism

    def draws():
        return random.random(), float(np.random.rand()), float(torch.rand(1))

    set_determinism(7, deterministic=False)
    first = draws()
    set_determinism(7, deterministic=False)
    assert draws() == first
    set_determinism(8, deterministic=False)
    assert all(a != b for a, b in zip(draws(), first))

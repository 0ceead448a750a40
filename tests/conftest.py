"""Shared fixtures: tiny synthetic data, the real shared Herlev cells, and the test device."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # workers share the cores: one torch thread each (set before torch is imported). With two threads each,
    # OpenMP's waiting threads fought over the cores and `-n 2` ran slower than one process.
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    os.environ.setdefault("MKL_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
SHARED_HERLEV = Path(os.environ.get("HERLEV_SHARED_DATA", REPO.parent / "shared" / "data" / "herlev"))


@pytest.fixture(scope="session")
def shared_herlev() -> Path:
    """The real Herlev cells in ../shared/data/herlev (README, letterbox200/, cells40/, features.csv)."""
    if not (SHARED_HERLEV / "letterbox200").is_dir():
        if os.environ.get("CI"):  # CI has ../shared beside the clone: its absence is a failure, not a skip
            pytest.fail(f"real Herlev data not found at {SHARED_HERLEV} on CI")
        pytest.skip(f"real Herlev data not found at {SHARED_HERLEV} (set HERLEV_SHARED_DATA)")
    return SHARED_HERLEV


@pytest.fixture(scope="session")
def device() -> str:
    """Device for tests: HERLEV_TEST_DEVICE (default cpu), so the same suite runs on a GPU."""
    return os.environ.get("HERLEV_TEST_DEVICE", "cpu")


@pytest.fixture(scope="session")
def synth_data(tmp_path_factory) -> Path:
    """A small synthetic Herlev-layout dataset (7 folders x 24 cells, 64 px), made once per session."""
    from herlev_fa.data.synth import write_synthetic

    return write_synthetic(tmp_path_factory.mktemp("synth") / "data", per_class=24, size=64, seed=0)


@pytest.fixture(scope="session")
def trained_run(synth_data, tmp_path_factory, device) -> Path:
    """A cls_reg test_resnet run trained on `synth_data` through the CLI, fold 0 held out."""
    from typer.testing import CliRunner

    from herlev_cli.main import app

    out = tmp_path_factory.mktemp("runs")
    result = CliRunner().invoke(app, ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained",
                                      "--head", "cls_reg", "--size", "48", "--epochs", "15", "--lr", "3e-3",
                                      "--bs", "16", "--seed", "0", "--device", device, "--out", str(out),
                                      "--name", "run", "--quiet"])
    assert result.exit_code == 0, result.output
    return out / "run"

"""bench/constraint_sweep.py on tiny synthetic data: one table row per configuration, paired gains right."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def test_constraint_sweep_table_matches_its_fold_runs(synth_data, tmp_path):
    out = tmp_path / "sweep"
    cmd = [sys.executable, str(ROOT / "bench" / "constraint_sweep.py"), "--data", str(synth_data), "--arch",
           "test_resnet", "--size", "32", "--epochs", "1", "--folds", "2", "--weights-lambda", "0.5,2",
           "--out", str(out), "--device", "cpu"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = (out / "sweep.md").read_text().splitlines()
    assert "test_resnet, 32 px, 1 epochs" in lines[0] and "kept epoch: last" in lines[0]
    rows = {_cells(line)[0]: _cells(line) for line in lines if line.startswith("| ") and "configuration" not in line}
    assert list(rows) == ["cls", "reg", "cls_reg λ=0.5", "cls_reg λ=2"]

    def accuracy(folder: str, head: str) -> np.ndarray:
        return np.array([json.loads((out / folder / head / f"fold{k}" / "metrics.json").read_text())["accuracy"]
                         for k in (0, 1)])

    cls = accuracy("cls", "cls")
    assert rows["cls"][1] == f"{100 * cls.mean():.1f} ± {100 * cls.std():.1f}"
    assert rows["cls"][-1] == "+0.0 (0/2)"
    for label, folder in (("cls_reg λ=0.5", "cls_reg-0.5"), ("cls_reg λ=2", "cls_reg-2")):
        gain = accuracy(folder, "cls_reg") - cls
        assert rows[label][-1] == f"{100 * gain.mean():+.1f} ({int((gain > 0).sum())}/2)"
        config = json.loads((out / folder / "cls_reg" / "fold0" / "herlev.json").read_text())["config"]
        assert config["model"]["mse_weight"] == pytest.approx(float(label.split("=")[1]))
        assert config["keep"] == "last"

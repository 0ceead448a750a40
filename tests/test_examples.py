"""The examples run as a user runs them: quick_finetune.py as a subprocess (nothing stray on its stderr), the
notebook in a fresh kernel, explain_one_cell.py as `__main__` in this process (`helpers.run_script`)."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from helpers import run_script
from herlev_fa.evaluation import held_out_items, predict_items
from herlev_fa.metrics import severity_metrics
from herlev_fa.runs import load_run

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _accuracy_of(run_dir: Path, on_held_out_of: Path, data: Path) -> float:
    """Accuracy of one run on another run's held-out images, through evaluate's code path (not predict's)."""
    run = load_run(run_dir)
    out, y, _ = predict_items(run, held_out_items(load_run(on_held_out_of), data), device="cpu", progress=False)
    return severity_metrics(out, y, run.head, run.task.severities)["accuracy"]


def test_quick_finetune_script_demo(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, str(EXAMPLES / "quick_finetune.py"), "--out", str(tmp_path / "qf")],
                            capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Warning" not in result.stderr and "warn" not in result.stderr, result.stderr  # nothing stray for the reader
    before = float(re.search(r"accuracy before fine-tuning: ([\d.]+)", result.stdout).group(1))
    after = float(re.search(r"accuracy after fine-tuning: +([\d.]+)", result.stdout).group(1))
    scratch_dir = Path(re.search(r"\((\S+)\)\n", result.stdout).group(1))
    new_dir = Path(re.search(r"run folder: (\S+)\)", result.stdout).group(1))
    # the fine-tune started from the scratch run's weights, on the other data set
    config = json.loads((new_dir / "herlev.json").read_text())["config"]
    assert config["model"]["weights"] == str(scratch_dir / "model.safetensors")
    assert config["data"]["data"] == str(tmp_path / "qf" / "data_new")
    # both printed numbers are what another code path finds on the same held-out images
    assert after == pytest.approx(json.loads((new_dir / "metrics.json").read_text())["accuracy"], abs=5e-4)
    assert before == pytest.approx(_accuracy_of(scratch_dir, new_dir, tmp_path / "qf" / "data_new"), abs=5e-4)
    assert after > 0.6  # well above the majority class (3/7 of the cells are normal)


def test_quick_finetune_notebook(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(EXAMPLES / "quick_finetune.ipynb", as_version=4)
    assert all(not c.get("outputs") and c.get("execution_count") is None for c in nb.cells if c.cell_type == "code"), \
        "the notebook is saved with outputs"
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    cell = next(c for c in nb.cells if "accuracy" in c.metadata.get("tags", []))
    result = next(o for o in cell.outputs if o.output_type == "execute_result")
    accuracy = ast.literal_eval(result["data"]["text/plain"])
    new_run = max((tmp_path / "quick_finetune_nb").glob("*-test_resnet-cls"))  # the later of the two runs
    assert accuracy["after"] == pytest.approx(json.loads((new_run / "metrics.json").read_text())["accuracy"], abs=1e-4)
    assert accuracy["after"] > 0.6 and 0 <= accuracy["before"] <= 1
    # the same fine-tune in plain fastai code (the DataBlock, build_learner, fine_tune), on the same held-out cells
    cell = next(c for c in nb.cells if "fastai" in c.metadata.get("tags", []))
    fastai_accuracy = float(next(o for o in cell.outputs if o.output_type == "execute_result")["data"]["text/plain"])
    assert fastai_accuracy > 0.6


def test_explain_one_cell_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stdout = run_script(EXAMPLES / "explain_one_cell.py", "--out", tmp_path / "e")
    share, area, enrichment = re.search(r"nucleus: ([\d.]+)% of the positive attribution on ([\d.]+)% of the pixels "
                                        r"\(enrichment ([\d.]+)\)", stdout).groups()
    assert float(enrichment) == pytest.approx(float(share) / float(area), rel=0.02)
    assert float(enrichment) > 1.5  # the synthetic severity lives in the nucleus
    figure = Path(stdout.split("figure: ")[1].strip())
    assert figure.is_file() and figure.with_suffix(".npy").name.endswith("_ig.npy")
    assert (figure.parent / figure.name.replace(".png", ".npy")).is_file()

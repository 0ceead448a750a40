"""Killed runs (SIGKILL) resume from their last completed epoch, and every file left behind is whole.

The runs are killed in forks of the test process (`helpers.killed_cli`): a real SIGKILL from outside, without the
5 s start of a new interpreter; test_input_battery's SIGTERM tests run the command as its own process."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from safetensors.torch import load_file

from helpers import killed_cli
from herlev_fa.training.checkpoint import find


def _cmd(data, out, name, *extra):
    return ["train", "--data", str(data), "--arch", "test_resnet",
            "--size", "32", "--epochs", "6", "--bs", "16", "--seed", "1", "--device", "cpu", "--out", str(out),
            "--name", name, "--quiet", "--checkpoint-every", "0", *extra]


def _run(cmd):
    """`cmd` in this process, one thread as in the killed forks (the same sums, so the same numbers); its output."""
    import torch
    from typer.testing import CliRunner

    from herlev_cli.main import app

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        result = CliRunner().invoke(app, cmd)
    finally:
        torch.set_num_threads(threads)
    assert result.exit_code == 0, result.output[-2000:]
    return result.output


def _log_rows(path):
    try:
        return len(pd.read_csv(path))
    except (FileNotFoundError, pd.errors.EmptyDataError):
        return 0


@pytest.mark.parametrize("start", ["scratch", "finetune", "ema", "albumentations"])
def test_killed_run_resumes_to_the_same_result(synth_data, request, tmp_path, start):
    """ema: the weight average is in the checkpoint, so the resumed run keeps the same average.
    albumentations: the DataBlock, each image augmented in worker processes (reseeded from torch's generator) and
    drawn by fastai's WeightedDL (--balance, from NumPy's): both generators are in the checkpoint."""
    extra = {"scratch": ["--no-pretrained"], "ema": ["--no-pretrained", "--ema", "0.8"],
             "albumentations": ["--no-pretrained", "--augment", "albumentations", "--workers", "2", "--balance"],
             "finetune": lambda: ["--weights",
                                  str(request.getfixturevalue("trained_run") / "model.safetensors")]}[start]
    extra = extra() if callable(extra) else extra  # only the fine-tune needs the trained run
    _run(_cmd(synth_data, tmp_path, "reference", *extra))
    # scratch: 6 one-cycle epochs; finetune: 1 frozen + 6 unfrozen. Killed in the middle of the 4th (the last fit).
    assert killed_cli(_cmd(synth_data, tmp_path, "killed", *extra), epoch=4 if start == "finetune" else 3)
    assert not (tmp_path / "killed" / "herlev.json").exists()
    resume = find(tmp_path / "killed")
    # the checkpoint of the epoch before the kill: (fit, its last completed epoch)
    assert resume is not None and (resume.phase, resume.epoch) == ((1, 2) if start == "finetune" else (0, 2))
    log = _run([a for a in _cmd(synth_data, tmp_path, "killed", *extra, "--resume") if a != "--quiet"])
    epochs = 7 if start == "finetune" else 6
    # the log says where it resumed, then one plain line per remaining epoch, ending with the last one
    assert f"resuming '{tmp_path / 'killed'}' from" in log, log
    assert log.index("resuming") < log.index(f"fold 0 epoch {epochs}/{epochs}: ")

    ref = json.loads((tmp_path / "reference" / "metrics.json").read_text())
    got = json.loads((tmp_path / "killed" / "metrics.json").read_text())
    for name in ("accuracy", "auc", "mse", "kappa"):
        assert got[name] == pytest.approx(ref[name], abs=1e-5), name
    assert got["confusion_matrix"] == ref["confusion_matrix"]
    ref_log, got_log = pd.read_csv(tmp_path / "reference" / "log.csv"), pd.read_csv(tmp_path / "killed" / "log.csv")
    assert len(got_log) == len(ref_log) == epochs
    assert np.allclose(got_log["valid_loss"], ref_log["valid_loss"], atol=1e-5)
    # removed once the run finished, with any half-written one
    assert not list((tmp_path / "killed").glob("*checkpoint*"))


def _check_whole(path):
    """Open every file of a run folder the way the tool would; raise if any is partial."""
    for f in path.rglob("*"):
        if f.is_dir() or f.name.endswith(".tmp") or any(part.startswith(".checkpoint.tmp-") for part in f.parts):
            continue  # a temporary name, or a checkpoint being written when killed: never read by the tool
        if f.suffix == ".json":
            json.loads(f.read_text())
        elif f.suffix == ".yaml":
            import yaml

            assert isinstance(yaml.safe_load(f.read_text()), dict)
        elif f.suffix == ".csv":
            pd.read_csv(f)
        elif f.suffix == ".safetensors":
            load_file(str(f))
        elif f.suffix == ".png":
            Image.open(f).load()
        else:
            raise AssertionError(f"unexpected file {f}")


@pytest.mark.parametrize("moment", ["folder made", "mid-training", "writing the results"])
def test_files_are_whole_after_a_kill(synth_data, tmp_path, moment):
    """SIGKILL as soon as the run reaches a stage: every file left is whole, and the run resumes or loads."""
    run = tmp_path / "k"
    ready = {"folder made": lambda: (run / "folds.csv").exists(),  # before the first epoch ends
             "mid-training": lambda: _log_rows(run / "log.csv") >= 2,  # checkpoints written every epoch
             "writing the results": lambda: (run / "predictions.csv").exists()}[moment]
    assert killed_cli(_cmd(synth_data, tmp_path, "k", "--no-pretrained"), when=ready), "the run finished first"
    _check_whole(run)
    if (run / "herlev.json").exists():
        from herlev_fa.runs import load_run

        assert load_run(run).record.fold == 0
    else:
        resume = find(run)  # a checkpoint, if any, loads
        assert moment == "folder made" or resume is not None


def test_resume_of_a_finished_run_reuses_it_or_names_the_options_that_differ(synth_data, trained_run, device):
    from typer.testing import CliRunner

    from herlev_cli.main import app

    same = ["train", "--data", str(synth_data), "--arch", "test_resnet", "--no-pretrained", "--head", "cls_reg",
            "--size", "48", "--epochs", "15", "--lr", "3e-3", "--bs", "16", "--seed", "0", "--device", device,
            "--out", str(trained_run.parent), "--name", trained_run.name, "--resume"]
    before = (trained_run / "model.safetensors").stat().st_mtime_ns
    other = CliRunner().invoke(app, [*same[:4], "resnet18", *same[5:]])
    assert other.exit_code == 2
    assert "finished with other settings (arch: 'test_resnet' there, 'resnet18' now)" in " ".join(other.output.split())
    again = CliRunner().invoke(app, [*same, "--json"])
    assert again.exit_code == 0, again.output
    ref = json.loads((trained_run / "metrics.json").read_text())
    assert json.loads(again.output)["metrics"][0]["accuracy"] == ref["accuracy"]
    assert (trained_run / "model.safetensors").stat().st_mtime_ns == before  # nothing trained or rewritten

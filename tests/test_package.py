"""Importing the package: no side effects on the process, no heavy imports, no shadowed names."""

import subprocess
import sys

import pytest

PROBE = r"""
import os, sys, warnings
env, filters = dict(os.environ), list(warnings.filters)
import herlev_fa
assert dict(os.environ) == env, "import changed the environment"
assert list(warnings.filters) == filters, "import changed the warning filters"
heavy = sorted(m for m in ("torch", "fastai", "timm", "matplotlib", "captum", "albumentations") if m in sys.modules)
print("heavy:" + ",".join(heavy))
# the layers, in the order a user meets them: loading a run to predict, then evaluation and explanation
import herlev_fa.prediction, herlev_fa.runs, herlev_fa.model.network
from herlev_fa.runs import load_run
run = load_run(sys.argv[1])
light = sorted(m for m in ("fastai", "sklearn", "matplotlib", "albumentations", "captum", "accelerate")
               if m in sys.modules)
print("predict:" + ",".join(light + sorted(m for m in sys.modules if m.startswith("herlev_fa.training"))))
import herlev_fa.evaluation, herlev_fa.explanation.report, herlev_fa.explanation.sanity
import herlev_fa.explanation.faithfulness
print("others:" + ",".join(sorted(m for m in sys.modules if m.startswith("herlev_fa.training") or m == "fastai")))
import herlev_fa.training.loop, herlev_fa.reproduction, herlev_fa.explanation.attribution
for name in ("train", "evaluate", "predict", "reproduce", "explain", "quantify"):
    print(name, type(getattr(herlev_fa, name)).__name__)
"""


@pytest.fixture(scope="module")
def probe(trained_run) -> list[str]:
    """What a fresh interpreter prints as it imports the package, loads a run, then imports every layer."""
    return subprocess.run([sys.executable, "-c", PROBE, str(trained_run)], capture_output=True, text=True,
                          check=True).stdout.split("\n")


def test_import_is_light_and_changes_nothing(probe):
    assert probe[0] == "heavy:"
    for name in ("train", "evaluate", "predict", "reproduce", "explain", "quantify"):
        assert f"{name} function" in probe, f"herlev_fa.{name} is not the function: {probe}"


def test_prediction_loads_a_run_without_the_trainer(probe):
    """Loading a run and predicting need torch and timm: no fastai, training module, scikit-learn, matplotlib or
    albumentations; evaluation and explanation import no training module either."""
    assert probe[1] == "predict:", probe
    assert probe[2] == "others:", probe


def test_unknown_name_is_an_attribute_error():
    import herlev_fa

    try:
        herlev_fa.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("no AttributeError")


HEAVY = ("torch", "fastai", "timm", "captum", "matplotlib", "pandas", "albumentations", "sklearn", "cv2")


def test_cli_imports_no_heavy_library():
    """`herlev --help` and a mistyped option must not wait for torch: the CLI imports it inside the commands."""
    probe = f"import herlev_cli.main, sys; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_help_and_usage_errors_import_no_heavy_library():
    probe = ("import sys, runpy\nsys.argv = ['herlev'] + sys.argv[1:]\n"
             "try:\n    runpy.run_module('herlev_cli.main', run_name='__main__')\nexcept SystemExit as e:\n"
             f"    print('exit', e.code, sorted(m for m in {HEAVY!r} if m in sys.modules))")
    for args, code in ((["--help"], 0), (["train", "--help"], 0), (["train", "--bogus"], 2), (["--version"], 0)):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True).stdout
        assert out.strip().endswith(f"exit {code} []"), (args, out[-500:])


def test_option_help_and_defaults_come_from_the_config():
    from typer.testing import CliRunner

    from herlev_cli.main import app
    from herlev_fa.config import DataConfig, TrainConfig, help_of

    text = " ".join(CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "400"}).output.split())
    for cls, name in ((TrainConfig, "epochs"), (TrainConfig, "keep"), (DataConfig, "size"), (TrainConfig, "quiet")):
        assert help_of(cls, name) in text, name
    assert "[default: 60]" in text and "[default: 224]" in text
    assert "<bool>" not in text.replace("--help <bool>", "")  # flags take no value (typer's own --help aside)

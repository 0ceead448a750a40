"""Importing the package: no side effects on the process, no heavy imports, no shadowed names."""

import subprocess
import sys

PROBE = r"""
import os, sys, warnings
env, filters = dict(os.environ), list(warnings.filters)
import herlev_fa
assert dict(os.environ) == env, "import changed the environment"
assert list(warnings.filters) == filters, "import changed the warning filters"
heavy = sorted(m for m in ("torch", "fastai", "timm", "matplotlib", "captum", "albumentations") if m in sys.modules)
print("heavy:" + ",".join(heavy))
import herlev_fa.training.loop, herlev_fa.evaluation, herlev_fa.prediction, herlev_fa.reproduction
import herlev_fa.explanation.attribution
for name in ("train", "evaluate", "predict", "reproduce", "explain", "quantify"):
    print(name, type(getattr(herlev_fa, name)).__name__)
"""


def test_import_is_light_and_changes_nothing():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[0] == "heavy:"
    for name in ("train", "evaluate", "predict", "reproduce", "explain", "quantify"):
        assert f"{name} function" in out, f"herlev_fa.{name} is not the function: {out}"


def test_unknown_name_is_an_attribute_error():
    import herlev_fa

    try:
        herlev_fa.no_such_thing  # noqa: B018
    except AttributeError as e:
        assert "no_such_thing" in str(e)
    else:
        raise AssertionError("no AttributeError")

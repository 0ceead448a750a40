"""Atomic writes: whole files or none, strict JSON, and the mode the umask gives."""

import json
import math
import os
import stat
from pathlib import Path

import pytest

from herlev_fa.atomic import atomic_path, current_umask, finite_or_none, write_json, write_text
from herlev_fa.errors import HerlevError


@pytest.fixture(params=[0o022, 0o002, 0o077])
def umask(request):
    old = os.umask(request.param)
    yield request.param
    os.umask(old)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_current_umask_reads_the_process_umask(umask):
    assert current_umask() == umask


def test_finished_files_get_the_umask_mode_and_temp_files_stay_private(tmp_path, umask):
    seen = {}
    with atomic_path(tmp_path / "a.csv") as tmp:
        tmp.write_text("x\n")
        seen["tmp"] = _mode(tmp)
    write_text(tmp_path / "b.md", "# b\n")
    write_json(tmp_path / "c.json", {"a": 1})
    assert seen["tmp"] == 0o600
    for name in ("a.csv", "b.md", "c.json"):
        assert _mode(tmp_path / name) == 0o666 & ~umask, name
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.csv", "b.md", "c.json"]


def test_a_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "a.csv") as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert list(tmp_path.iterdir()) == []


def test_writing_under_a_file_names_it(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(HerlevError, match="'.*f' is a file, not a folder"):
        write_text(tmp_path / "f" / "sub" / "a.md", "x")


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_json_is_strict_with_null_for_what_cannot_be_computed(tmp_path, value):
    write_json(tmp_path / "m.json", {"auc": value, "per_class": [0.5, value], "nested": {"k": (value, 1.0)}, "n": 3})
    text = (tmp_path / "m.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"auc": None, "per_class": [0.5, None], "nested": {"k": [None, 1.0]}, "n": 3}
    assert finite_or_none(0.25) == 0.25 and finite_or_none("nan") == "nan"


def test_run_files_are_readable_under_the_default_umask(trained_run):
    mask = current_umask()
    files = [p for p in trained_run.rglob("*") if p.is_file()]
    assert {"model.safetensors", "herlev.json", "folds.csv", "metrics.json"} <= {p.name for p in files}
    wrong = {p.name: oct(_mode(p)) for p in files if _mode(p) != 0o666 & ~mask}
    assert not wrong, wrong

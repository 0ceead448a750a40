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


@pytest.mark.parametrize("code,words", [(28, "no space left on its device"), (122, "the disk quota is exceeded"),
                                        (27, "the file size limit (ulimit -f) is reached")])
def test_a_full_disk_is_one_line_naming_the_file_and_the_space_needed(tmp_path, code, words):
    """The writer fails part-way: one HerlevError line naming the target, what stopped it, the space it needs."""
    target = tmp_path / "figure.png"
    with pytest.raises(HerlevError) as e:
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"x" * 1500)
            raise OSError(code, os.strerror(code))
    message = str(e.value)
    assert f"cannot write '{target}': {words} (it needs more than the 1.5 KB written, " in message, message
    assert " free there); free space, or choose another output folder" in message and "\n" not in message
    assert list(tmp_path.iterdir()) == []  # neither the target nor the temporary file


def test_a_full_disk_under_a_writers_own_error_type_is_recognised(tmp_path):
    """safetensors reports the OS error in its text; matplotlib and pandas chain it: both are read."""
    from safetensors import SafetensorError

    with pytest.raises(HerlevError, match=r"model.safetensors': no space left on its device \(it needs 2.0 MB, "):
        with atomic_path(tmp_path / "model.safetensors", size=2_000_000):
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    with pytest.raises(HerlevError, match="quota"):
        with atomic_path(tmp_path / "a.png"):
            try:
                raise OSError(122, "Disk quota exceeded")
            except OSError as e:
                raise RuntimeError("savefig failed") from e
    with pytest.raises(RuntimeError, match="not a disk problem"):  # any other failure stays what it is
        with atomic_path(tmp_path / "b.png"):
            raise RuntimeError("not a disk problem")
    assert list(tmp_path.iterdir()) == []


def test_a_folder_where_the_file_goes_is_named(tmp_path):
    (tmp_path / "fig.png").mkdir()
    with pytest.raises(HerlevError, match="a folder of that name exists; name a file to write, not a folder"):
        write_text(tmp_path / "fig.png", "x")
    assert [p.name for p in tmp_path.iterdir()] == ["fig.png"]


def test_a_herlev_error_keeps_its_one_line_when_fastai_rewrites_it():
    from fastcore.xtras import modify_exception

    e = modify_exception(HerlevError("cannot write 'x'"), "Exception occured in `Cb`:\n\tcannot write 'x'",
                         replace=True)
    assert str(e) == "cannot write 'x'"

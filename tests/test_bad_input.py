"""Bad input through the CLI: one-line error, exit 2, no traceback, nothing half-written.

Each case builds its input in a fresh folder and names the words the error must contain. The data cases that
every command meets (unreadable images, unknown classes, ...) are test_input_battery.py's; the two here check
what a train error advises (--skip-bad).
"""

import json
import shutil

import pytest
from typer.testing import CliRunner

from helpers import herlev_folder, write_image
from herlev_cli.main import app

runner = CliRunner()
TRAIN = ["train", "--arch", "test_resnet", "--no-pretrained", "--size", "32", "--epochs", "1", "--bs", "8",
         "--folds", "2", "--quiet"]


def _data(tmp_path):
    return herlev_folder(tmp_path / "data", per_class=2)


def _missing(tmp_path):
    return ["--data", str(tmp_path / "nope")]


def _empty(tmp_path):
    (tmp_path / "empty").mkdir()
    return ["--data", str(tmp_path / "empty")]


def _no_class(tmp_path):
    write_image(tmp_path / "d" / "holiday" / "a.png")
    return ["--data", str(tmp_path / "d")]


def _truncated(tmp_path):
    root = _data(tmp_path)
    good = root / "light_dysplastic" / "lig0.BMP"
    (root / "light_dysplastic" / "broken.BMP").write_bytes(good.read_bytes()[:100])
    return ["--data", str(root)]


def _text_as_image(tmp_path):
    root = _data(tmp_path)
    (root / "severe_dysplastic" / "notes.jpg").write_text("hello")
    return ["--data", str(root)]


def _with(option, value):
    def build(tmp_path):
        return ["--data", str(_data(tmp_path)), option, value]
    return build


CASES = {
    "missing folder": (_missing, "data folder '.*nope' does not exist"),
    "empty folder": (_empty, "no class folder found"),
    "no known class folder": (_no_class, "no class folder found"),
    "truncated image": (_truncated, "broken.BMP.*--skip-bad"),
    "text file as image": (_text_as_image, "notes.jpg.*--skip-bad"),
    "epochs 0": (_with("--epochs", "0"), "--epochs 0 is out of range"),
    "negative batch": (_with("--bs", "-1"), "--bs -1 is out of range"),
    "tiny size": (_with("--size", "8"), "--size 8 is out of range"),
    "fold out of range": (_with("--fold", "5"), "--fold 5 is out of range"),
    "fold not a number": (_with("--fold", "last"), "--fold 'last' is not a fold number"),
    "lr not a number": (_with("--lr", "fast"), "--lr 'fast' is not a number"),
    "unknown arch": (_with("--arch", "resnet1O1"), "unknown architecture 'resnet1O1'"),
    "unknown head": (_with("--head", "svm"), "unknown head 'svm'"),
    "warm-up beyond training": (_with("--mse-warmup", "2"), "--mse-warmup 2.0 is out of range"),
    "unknown keep": (_with("--keep", "median"), "unknown --keep 'median': choose one of best, last"),
    "label smoothing of 1": (_with("--label-smoothing", "1"), "--label-smoothing 1.0 is out of range"),
    "label smoothing of a soft-label head": (lambda tmp: _with("--label-smoothing", "0.1")(tmp) + ["--head", "sord"],
                                             r"applies to heads trained with cross-entropy on the class \(cls, "
                                             r"cls_reg\), not to sord"),
    "ema decay of 1": (_with("--ema", "1"), "--ema 1.0 is out of range"),
    "ema choosing an epoch": (lambda tmp: _with("--ema", "0.99")(tmp) + ["--keep", "best"],
                              "--ema averages the weights of the last epochs .*: use it with --keep last"),
    "negative mixup": (_with("--mixup", "-0.4"), r"--mixup -0.4 is out of range: use a Beta parameter"),
    "mixup and cutmix": (lambda tmp: _with("--mixup", "0.4")(tmp) + ["--cutmix", "1"],
                         "--mixup and --cutmix are two ways of mixing images: choose one"),
    "unknown task": (_with("--task", "sipakmed"), "unknown task 'sipakmed'"),
    "missing weights file": (_with("--weights", "/nonexistent/w.safetensors"), "weights file .* does not exist"),
    "missing class map": (_with("--classes", "/nonexistent/map.yaml"), "class map .* does not exist"),
}


def assert_one_line_error(result, pattern):
    import re

    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in result.output


@pytest.mark.parametrize("case", CASES)
def test_train_bad_input(tmp_path, case):
    build, pattern = CASES[case]
    args = build(tmp_path)
    out = tmp_path / "runs"
    result = runner.invoke(app, TRAIN + args + ["--out", str(out)])
    assert_one_line_error(result, pattern)
    assert not out.exists() or not any(out.rglob("*")), "a failed run left files behind"


def test_skip_bad_trains_and_records_the_skipped_file(tmp_path):
    args = _truncated(tmp_path)
    result = runner.invoke(app, TRAIN + args + ["--skip-bad", "--out", str(tmp_path / "runs"), "--name", "r"])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "runs" / "r" / "herlev.json").read_text())
    assert [p.rsplit("/", 1)[-1] for p in meta["skipped_images"]] == ["broken.BMP"]


def test_output_folder_that_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("I am a file")
    result = runner.invoke(app, TRAIN + ["--data", str(_data(tmp_path)), "--out", str(tmp_path / "runs")])
    assert_one_line_error(result, "runs' is a file, not a folder")


def test_existing_run_name_is_not_overwritten(tmp_path):
    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "runs" / "r" / "keep.txt").write_text("precious")
    result = runner.invoke(app, TRAIN + ["--data", str(_data(tmp_path)), "--out", str(tmp_path / "runs"),
                                         "--name", "r"])
    assert_one_line_error(result, "already exists")
    assert (tmp_path / "runs" / "r" / "keep.txt").read_text() == "precious"


@pytest.fixture(scope="module")
def copy_of_run(trained_run, tmp_path_factory):
    def make(name):
        dst = tmp_path_factory.mktemp("runcopy") / name
        shutil.copytree(trained_run, dst)
        return dst
    return make


def _drop(name):
    return lambda run: (run / name).unlink()


def _edit_meta(change):
    def apply(run):
        meta = json.loads((run / "herlev.json").read_text())
        change(meta)
        (run / "herlev.json").write_text(json.dumps(meta))
    return apply


RUN_CASES = {
    "no herlev.json": (_drop("herlev.json"), "has no herlev.json"),
    "no weights": (_drop("model.safetensors"), "has no model.safetensors"),
    "no folds file": (_drop("folds.csv"), "has no folds file"),
    "sidecar not json": (lambda run: (run / "herlev.json").write_text("{oops"), "is not valid JSON"),
    "sidecar wrong type": (_edit_meta(lambda m: m.update(image_size="big")), "'image_size' should be int"),
    "sidecar missing key": (_edit_meta(lambda m: m.pop("head")), "lacks 'head'"),
    "weights of another task": (_edit_meta(lambda m: m["task"].update(classes=["a", "b"], severities=[0, 1])),
                                "config.json': num_classes 5, but herlev.json's head and classes need 2"),
    "data moved away": (_edit_meta(lambda m: m.update(data_root="/nonexistent")), "held-out image.*missing.*--data"),
}


@pytest.mark.parametrize("case", RUN_CASES)
def test_evaluate_bad_run_folder(copy_of_run, case):
    damage, pattern = RUN_CASES[case]
    run = copy_of_run(case.replace(" ", "_"))
    damage(run)
    result = runner.invoke(app, ["evaluate", str(run), "--device", "cpu"])
    assert_one_line_error(result, pattern)


def test_evaluate_on_a_folder_of_another_task(trained_run, tmp_path):
    root = herlev_folder(tmp_path / "sip", folders={"im_Koilocytotic": 2})
    result = runner.invoke(app, ["evaluate", str(trained_run), "--data", str(root)])
    assert_one_line_error(result, "no class folder found in '.*sip'")


def test_missing_run_folder():
    assert_one_line_error(runner.invoke(app, ["evaluate", "/nonexistent/run"]), "run folder .* does not exist")


def test_a_setting_error_names_the_setting_in_python_and_the_option_on_the_command_line(tmp_path):
    from herlev_fa.config import DataConfig, EvalSettings, TrainConfig
    from herlev_fa.errors import SettingError

    with pytest.raises(SettingError) as caught:
        EvalSettings(n_boot=-1)
    assert str(caught.value) == "n_boot -1 is out of range: use 0 (no intervals) or more resamples"
    assert caught.value.cli == "--bootstrap -1 is out of range: use 0 (no intervals) or more resamples"
    with pytest.raises(SettingError, match=r"^ema averages the weights .*: use it with keep last$"):
        TrainConfig(DataConfig(tmp_path), ema=0.99, keep="best")
    # one device rule, one difference: training takes no numbered GPU (accelerate picks each process's)
    assert EvalSettings(device="cuda:1").device == "cuda:1"
    with pytest.raises(SettingError, match=r"^unknown device 'cuda:1': choose one of auto, cpu, cuda$"):
        TrainConfig(DataConfig(tmp_path), device="cuda:1")
    result = runner.invoke(app, ["evaluate", str(tmp_path / "no-run"), "--bootstrap", "-1"])  # before the run is read
    assert_one_line_error(result, r"^error: --bootstrap -1 is out of range: use 0 \(no intervals\)")
    result = runner.invoke(app, ["predict", str(tmp_path), "--run", str(tmp_path / "no-run"), "--bs", "0"])
    assert_one_line_error(result, r"^error: --bs 0 is out of range: use 1 or more images per batch$")

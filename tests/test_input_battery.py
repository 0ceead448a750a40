"""The bad-input battery: each data case x each command that reads data, with the behaviour expected.

The table `CASES` is the contract, and docs/bad_input.md documents it case by case:
- "works": exit 0 and the command's output written;
- "warns": exit 0 with a warning naming the file (the file skipped);
- "error": exit 2, one line `error: ...` naming the file or folder, no traceback, no output written.
"""

import json
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from helpers import herlev_folder, write_image, write_mask
from herlev_cli.main import app

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


def _base(tmp):
    return herlev_folder(tmp / "da ta", per_class=2)  # a space in every path


def _truncated(tmp):
    root = _base(tmp)
    good = (root / "light_dysplastic" / "lig0.BMP").read_bytes()
    (root / "light_dysplastic" / "bad.BMP").write_bytes(good[: len(good) // 2])
    return root


def _zero_byte(tmp):
    root = _base(tmp)
    (root / "light_dysplastic" / "bad.bmp").write_bytes(b"")
    return root


def _text(tmp):
    root = _base(tmp)
    (root / "light_dysplastic" / "bad.png").write_text("not an image")
    return root


def _sized(h, w):
    def build(tmp):
        root = _base(tmp)
        write_image(root / "severe_dysplastic" / "odd.png", h=h, w=w)
        return root
    return build


def _modes(tmp):
    root = _base(tmp)
    for mode, name in (("L", "gray.png"), ("RGBA", "rgba.png"), ("I;16", "deep.tif"), ("P", "pal.png")):
        write_image(root / "moderate_dysplastic" / name, mode=mode)
    return root


def _mask_size(tmp):
    root = _base(tmp)
    write_mask(root / "light_dysplastic" / "lig0-d.bmp", h=11, w=13)  # image is 20 x 24
    return root


def _mask_colours(tmp):
    root = _base(tmp)
    Image.fromarray(np.full((20, 24, 3), (10, 200, 30), np.uint8)).save(root / "light_dysplastic" / "lig0-d.bmp")
    return root


def _no_mask(tmp):
    root = _base(tmp)
    (root / "light_dysplastic" / "lig0-d.bmp").unlink()
    return root


def _empty_class(tmp):
    root = herlev_folder(tmp / "data", folders={"normal_columnar": 2, "light_dysplastic": 2, "severe_dysplastic": 2})
    (root / "carcinoma_in_situ").mkdir()
    return root


def _unknown_class(tmp):
    root = _base(tmp)
    write_image(root / "koilocytes" / "k.png")
    return root


def _duplicates(tmp):
    root = _base(tmp)
    write_image(root / "light_dysplastic" / "same.png", value=1)
    write_image(root / "severe_dysplastic" / "same.png", value=2)
    return root


def _unicode(tmp):
    root = herlev_folder(tmp / "données été", per_class=2)
    write_image(root / "light_dysplastic" / "cellule n°1 ü.png")
    return root


def _symlink_loop(tmp):
    root = _base(tmp)
    os.symlink("loop", root / "light_dysplastic" / "loop")  # a link to itself
    os.symlink(root, root / "severe_dysplastic" / "up")  # a link to an ancestor
    return root


def _ramp(scale, dtype):
    return (np.arange(20 * 24).reshape(20, 24) % 50 / 49 * scale).astype(dtype)


def _high_depth(tmp):
    root = _base(tmp)
    for name, arr in (("float.tif", _ramp(1, np.float32)), ("twelve.png", _ramp(4095, np.uint16)),
                      ("int32.tif", _ramp(65535, np.int32))):
        Image.fromarray(arr).save(root / "moderate_dysplastic" / name)
    return root


def _no_range(name, arr):
    def build(tmp):
        root = _base(tmp)
        Image.fromarray(arr).save(root / "light_dysplastic" / name)
        return root
    return build


def _case_twins(tmp):
    root = _base(tmp)
    write_image(root / "Carcinoma_In_Situ" / "cis9.png")
    return root


# case -> (builder, file or folder the message must name, expected behaviour per command)
CASES = {
    "truncated image": (_truncated, "bad.BMP", dict(train="error", reproduce="error", evaluate="error", predict="error",
                                                    lr_find="error",
                                                    explain="error", quantify="warns")),  # no mask: skipped first
    "zero-byte file": (_zero_byte, "bad.bmp", dict(train="error", reproduce="error", evaluate="error", predict="error",
                                                   lr_find="error",
                                                   explain="error")),
    "text file with an image extension": (_text, "bad.png", dict(train="error", reproduce="error", evaluate="error",
                                                                  predict="error",
                                                                  lr_find="error", explain="error")),
    "1x1 image": (_sized(1, 1), None, dict(train="works", evaluate="works", predict="works", explain="works")),
    "5000x5000 image": (_sized(5000, 5000), None, dict(train="works", evaluate="works", predict="works",
                                                       explain="works")),
    "grayscale, RGBA, 16-bit, palette images": (_modes, None, dict(train="works", evaluate="works", predict="works",
                                                                    explain="works")),
    "float 0..1, 12-bit and 32-bit integer grey images": (_high_depth, None, dict(train="works", predict="works",
                                                                                explain="works")),
    "mask of another size than its image": (_mask_size, "lig0-d.bmp", dict(train="works", predict="works",
                                                                            quantify="error")),
    "mask with unexpected colours": (_mask_colours, "lig0-d.bmp", dict(train="works", predict="works",
                                                                        quantify="error")),
    "image without mask": (_no_mask, "lig0.BMP", dict(train="works", predict="works", quantify="warns")),
    "empty class folder": (_empty_class, "carcinoma_in_situ", dict(train="warns", evaluate="warns", quantify="works")),
    "unknown class folder": (_unknown_class, "koilocytes' is not a known class",
                             dict(train="error", reproduce="error", evaluate="error", lr_find="error",
                                  quantify="error")),
    "duplicate file names across classes": (_duplicates, None, dict(train="works", evaluate="works", predict="works",
                                                                     explain="works")),
    "paths with spaces and non-ASCII characters": (_unicode, None, dict(train="works", evaluate="works",
                                                                         predict="works", explain="works",
                                                                         quantify="works")),
    "class folders that differ only by case": (_case_twins, "Carcinoma_In_Situ", dict(train="warns", evaluate="warns",
                                                                                    quantify="warns")),
    "symlink loop": (_symlink_loop, None, dict(train="works", predict="works", quantify="works")),
}


# --- generated kinds: each kind is one row of docs/bad_input.md, with as many cases as the generator makes ----------

def _png_header(w: int, h: int) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 10)) + chunk(b"IEND", b""))


def _bmp_header(w: int, h: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, w, h, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + 40 + 16, 0, 0, 54) + info + b"\0" * 16


def _jpg_header(w: int, h: int) -> bytes:  # JPEG sizes are 16-bit
    sof = (b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, min(h, 65535), min(w, 65535), 3)
           + b"\x01\x11\0\x02\x11\0\x03\x11\0")
    sos = b"\xff\xda" + struct.pack(">HB", 12, 3) + b"\x01\0\x02\x11\x03\x11\0\x3f\0"
    return b"\xff\xd8" + sof + sos + b"\0" * 16 + b"\xff\xd9"


def _tif_header(w: int, h: int) -> bytes:
    tags = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1), (273, 4, 1, 8),
            (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, 1)]
    ifd = struct.pack("<H", len(tags)) + b"".join(struct.pack("<HHII", *t) for t in tags) + struct.pack("<I", 0)
    return b"II*\0" + struct.pack("<I", 9) + b"\0" + ifd


HEADERS = {"png": _png_header, "bmp": _bmp_header, "jpg": _jpg_header, "tif": _tif_header}
# far beyond Pillow's limit (it raises), and between its warning and its error (it would decode 120 Mpx)
DECLARED = ((100_000, 100_000), (12_000, 10_000))


def _hostile(ext, w, h):
    def build(tmp):
        root = _base(tmp)
        (root / "light_dysplastic" / f"bomb.{ext}").write_bytes(HEADERS[ext](w, h))
        return root
    return build


# bytes that are not UTF-8 in a file name (Linux allows any byte but '/' and NUL)
UNDECODABLE = {"latin-1": b"c\xe9llule", "lone bytes": b"\xff\xfe", "cut sequence": b"cell\xc3",
               "overlong": b"\xc0\xaf"}


def _undecodable(name: bytes):
    def build(tmp):
        root = _base(tmp)
        folder = os.fsencode(root / "light_dysplastic")
        shutil.copy(root / "light_dysplastic" / "lig0.BMP", os.fsdecode(folder + b"/" + name + b".bmp"))
        return root
    return build


def _single_class(tmp):
    return herlev_folder(tmp / "one class", folders={"light_dysplastic": 4})


KIND = {}  # generated case -> its row in docs/bad_input.md
for ext in HEADERS:
    for i, (w, h) in enumerate(DECLARED):
        case = f"{ext} header declaring {w}x{h} pixels"
        expect = dict(train="error", evaluate="error", predict="error", explain="error")
        if i == 0 and ext in ("png", "tif"):
            expect.update(train_skip_bad="warns")  # the same reader for every format: two formats train
        CASES[case] = (_hostile(ext, w, h), f"bomb.{ext}", expect)
        KIND[case] = "image header declaring more pixels than Pillow decodes safely"
for i, (label, raw) in enumerate(UNDECODABLE.items()):
    case = f"file name with {label} bytes that are not UTF-8"
    expect = dict(evaluate="works", predict="works", explain="works", **({"train": "works"} if i == 0 else {}))
    CASES[case] = (_undecodable(raw), None, expect)
    KIND[case] = "file names that are not valid UTF-8"
NO_RANGE = {  # grey images no 8-bit reading fits: each names its file and mode
    "32-bit integer image beyond 16 bits": ("int32.tif", _ramp(1e6, np.int32)),
    "signed image with negative values": ("signed.tif", _ramp(200, np.int32) - 100),
    "float image beyond 0..1": ("float.tif", _ramp(255, np.float32)),
    "float image holding NaN": ("nan.tif", np.full((20, 24), np.nan, np.float32)),
    "float image that decodes to one grey level": ("flat.tif", _ramp(1e-3, np.float32)),
}
for case, (name, arr) in NO_RANGE.items():
    CASES[case] = (_no_range(name, arr), name, dict(train="error", predict="error", explain="error"))
    KIND[case] = "grey images whose values fit no range (beyond 16 bits, negative, float beyond 0..1 or NaN, one level)"
CASES["single-class data set"] = (_single_class, "cannot be computed", dict(train="warns", evaluate="warns"))

TRAIN = ["--arch", "test_resnet", "--no-pretrained", "--size", "32", "--bs", "4", "--folds", "2", "--quiet"]


BASE_NAME = re.compile(r"[a-z]{3}\d+\.BMP")  # the names `herlev_folder` gives


def _invoke(command, root, tmp, trained_run):
    out = tmp / "out"
    if command in ("train", "train_skip_bad"):
        args = ["train", "--data", str(root), *TRAIN, "--epochs", "1", "--out", str(out), "--name", "r"]
        args += ["--skip-bad"] if command == "train_skip_bad" else []
    elif command == "reproduce":
        args = ["reproduce", "--data", str(root), *TRAIN, "--epochs", "1", "--out", str(out)]
    elif command == "lr_find":
        args = ["lr-find", "--data", str(root), *TRAIN, "--out", str(out)]
    elif command == "evaluate":
        args = ["evaluate", str(trained_run), "--data", str(root), "--out", str(out), "--device", "cpu",
                "--bootstrap", "0"]
    elif command == "explain":
        images = [p for p in sorted(root.rglob("*.*"))
                  if p.is_file() and not p.name.lower().endswith(("-d.bmp", "-d.png"))]
        # the case's own files and one of the base folder's (a figure each: explaining all 15 took 3 s a case)
        images = [str(p) for p in images if p == images[0] or not BASE_NAME.fullmatch(p.name)]
        args = ["explain", *images, "--run", str(trained_run), "--out", str(out), "--steps", "8", "--device", "cpu",
                "--quiet"]
    elif command == "quantify":
        args = ["quantify", "--run", str(trained_run), "--data", str(root), "--split", "all", "--out", str(out),
                "--steps", "8", "--device", "cpu", "--quiet"]
    else:
        args = ["predict", str(root), "--run", str(trained_run), "--out", str(out / "p.csv"), "--device", "cpu"]
    return runner.invoke(app, args), out


MATRIX = [(case, command) for case, (_, _, expect) in CASES.items() for command in expect]


@pytest.mark.parametrize("case,command", MATRIX, ids=[f"{c}-{m}" for c, m in MATRIX])
def test_battery(case, command, tmp_path, trained_run):
    build, named, expect = CASES[case]
    root = build(tmp_path)
    result, out = _invoke(command, root, tmp_path, trained_run)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    if expect[command] == "error":
        assert result.exit_code == 2, result.output
        errors = [line for line in lines if line.startswith("error: ")]
        assert len(errors) == 1 and named in errors[0], result.output
        assert not out.exists() or not any(p.is_file() for p in out.rglob("*")), "an error left output behind"
    else:
        assert result.exit_code == 0, result.output
        assert out.exists() and any(p.is_file() for p in out.rglob("*"))
        warnings = [line for line in lines if line.startswith("warning: ")]
        if expect[command] == "warns":
            assert any(named in w for w in warnings), result.output
        for path in out.rglob("*.json"):  # strict JSON: a value that cannot be computed is null, never NaN
            json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"{path.name} holds {c}"))


def test_every_case_is_documented():
    doc = (REPO / "docs" / "bad_input.md").read_text()
    for case in CASES:
        assert f"| {KIND.get(case, case)} |" in doc, case


# --- run folders that are damaged or edited: validated against physics and against themselves -----------------------

NAN, INF = float("nan"), float("inf")
META_EDITS = {  # key in herlev.json (task.* inside "task") -> values a damaged or edited file may hold
    "mean": ([NAN] * 3, [INF, 0.5, 0.5], [-0.1, 0.5, 0.5], [0.5, 0.5], [2.0, 0.5, 0.5]),
    "std": ([0, 0.5, 0.5], [NAN] * 3, [-1, 1, 1], [1e9] * 3),
    "image_size": (0, -5, 10**6),
    "fold": (7, -1),
    "n_folds": (0, 1000),
    "head": ("svm", ""),
    "folds_file": ("../../etc/passwd", "/etc/passwd", ".."),
    "task.severities": ([NAN, 1, 2, 3, 4], [0, 1, 2, 3], [-1, 1, 2, 3, 4], [0, 1, 2, 3, 1e12]),
    "task.classes": (["normal"] * 5, ["normal"]),
}
CONFIG_EDITS = {"num_classes": (3, 7), "label_names": ("reversed", "renamed"), "architecture": ("resnet50",)}
FOLDS_EDITS = {"binary garbage": b"\x00\xff\x00\x13garbage\n\x89PNG", "empty file": b"",
               "no fold column": b"rel,label\na.bmp,normal\n", "fold beyond n_folds": None, "fold not a number": None,
               "unknown label": None, "path climbing out of the data root": None, "absolute path": None}


def _edit_json(path, key, value):
    data = json.loads(path.read_text())
    *parents, last = key.split(".")
    target = data
    for k in parents:
        target = target[k]
    if value == "reversed":
        value = target[last][::-1]
    elif value == "renamed":
        value = ["benign", *target[last][1:]]
    target[last] = value
    path.write_text(json.dumps(data))  # NaN and Infinity written as Python's json module reads them


def _edit_folds(run, label):
    if FOLDS_EDITS[label] is not None:
        (run / "folds.csv").write_bytes(FOLDS_EDITS[label])
        return
    lines = (run / "folds.csv").read_text().splitlines()
    rel, cls, fold = lines[1].split(",")
    row = {"fold beyond n_folds": f"{rel},{cls},9", "fold not a number": f"{rel},{cls},x",
           "unknown label": f"{rel},koilocyte,{fold}",
           "path climbing out of the data root": f"../../{rel},{cls},{fold}",
           "absolute path": f"/etc/{rel},{cls},{fold}"}[label]
    (run / "folds.csv").write_text("\n".join([lines[0], row, *lines[2:]]) + "\n")


def _nan_weights(run, value):
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = state[name].clone().fill_(value)
    save_file(state, str(run / "model.safetensors"))


def _swap_classes(run):
    """Two class names swapped in herlev.json, and config.json's label names edited to agree: self-consistent."""
    from herlev_fa.model.heads import get_head

    meta = json.loads((run / "herlev.json").read_text())
    classes = meta["task"]["classes"]
    classes[0], classes[1] = classes[1], classes[0]
    (run / "herlev.json").write_text(json.dumps(meta))
    config = json.loads((run / "config.json").read_text())
    config["label_names"] = get_head(meta["head"]).output_names(tuple(classes))
    (run / "config.json").write_text(json.dumps(config))


def _other_weights(run):
    """Weights of the same network and classes, but not those the run saved (another run's, or retouched)."""
    from safetensors.torch import load_file, save_file

    state = load_file(str(run / "model.safetensors"))
    name = next(k for k, v in state.items() if v.is_floating_point() and v.numel() > 1)
    state[name] = state[name] * 1.01
    save_file(state, str(run / "model.safetensors"))


RUN_EDITS = (  # (id, damage(run), file the error must name, command that reads it)
    [(f"herlev.json {key}={value!r}", lambda run, k=key, v=value: _edit_json(run / "herlev.json", k, v), "herlev.json",
      "predict") for key, values in META_EDITS.items() for value in values]
    + [("herlev.json classes renamed", lambda run: _edit_json(run / "herlev.json", "task.classes", "renamed"),
        "config.json", "predict")]
    + [(f"config.json {key}={value!r}", lambda run, k=key, v=value: _edit_json(run / "config.json", k, v),
        "config.json", "predict") for key, values in CONFIG_EDITS.items() for value in values]
    + [(f"folds.csv {label}", lambda run, k=label: _edit_folds(run, k), "folds.csv", "evaluate")
       for label in FOLDS_EDITS]
    + [(f"weights all {value}", lambda run, v=value: _nan_weights(run, v), "model.safetensors", "predict")
       for value in (NAN, INF)]
    + [("classes swapped in herlev.json and config.json alike", _swap_classes, "herlev.json's classes", "evaluate"),
       ("weights replaced by other valid weights", _other_weights, "model.safetensors is not the file this run saved",
        "evaluate")]
)


@pytest.mark.parametrize("damage,named,command", [e[1:] for e in RUN_EDITS], ids=[e[0] for e in RUN_EDITS])
def test_damaged_run_folder(damage, named, command, trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    damage(run)
    out = tmp_path / "out"
    if command == "predict":
        image = next(p for p in Path(json.loads((run / "herlev.json").read_text())["data_root"]).rglob("*.BMP"))
        args = ["predict", str(image), "--run", str(run), "--out", str(out / "p.csv"), "--device", "cpu"]
    else:
        args = ["evaluate", str(run), "--out", str(out), "--device", "cpu", "--bootstrap", "0"]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and named in errors[0] and "Traceback" not in result.output, result.output
    assert not out.exists(), "an error left output behind"


# --- options: out-of-range values, paths that escape --out, outputs that are files -----------------------------------

OPTION_VALUES = {  # (command, option) -> values that must be refused before any work
    ("train", "--seed"): ("-1", str(2**32)),
    ("train", "--lr"): ("0", "-1e-3", "10", "1e6", "nan", "inf"),
    ("train", "--wd"): ("-1", "nan"),
    ("train", "--mse-weight"): ("-1", "nan", "inf"),
    ("train", "--epochs"): ("0", "100000"),
    ("train", "--bs"): ("0", "1"),
    ("train", "--size"): ("8", "100000"),
    ("train", "--folds"): ("1", "21"),
    ("evaluate", "--bs"): ("0", "-3"),
    ("predict", "--bs"): ("0",),
    ("synth", "--per-class"): ("1", "-4"),
    ("synth", "--seed"): ("-1",),
    ("synth", "--size"): ("8",),
}
OPTION_CASES = [(c, o, v) for (c, o), values in OPTION_VALUES.items() for v in values]
TRAIN_FAST = ["--arch", "test_resnet", "--no-pretrained", "--size", "32", "--bs", "4", "--folds", "2", "--quiet"]


def _command_args(command, tmp, trained_run, data):
    out = tmp / "out"
    return out, {
        "train": ["train", "--data", str(data), *TRAIN_FAST, "--epochs", "1", "--out", str(out)],
        "lr-find": ["lr-find", "--data", str(data), *TRAIN_FAST, "--out", str(out)],
        "reproduce": ["reproduce", "--data", str(data), *TRAIN_FAST, "--epochs", "1", "--out", str(out)],
        "evaluate": ["evaluate", str(trained_run), "--out", str(out), "--device", "cpu", "--bootstrap", "0"],
        "predict": ["predict", str(data), "--run", str(trained_run), "--out", str(out / "p.csv"), "--device", "cpu"],
        "explain": ["explain", str(data / "light_dysplastic" / "lig0.BMP"), "--run", str(trained_run), "--out",
                    str(out), "--steps", "4", "--device", "cpu", "--quiet"],
        "quantify": ["quantify", "--run", str(trained_run), "--data", str(data), "--split", "all", "--out", str(out),
                     "--steps", "4", "--device", "cpu", "--quiet"],
        "synth": ["synth", str(out), "--size", "32"],
    }[command]


def _one_error(result):
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.output
    return errors[0]


@pytest.mark.parametrize("command,option,value", OPTION_CASES, ids=[" ".join(c) for c in OPTION_CASES])
def test_option_out_of_range(command, option, value, tmp_path, trained_run):
    data = _base(tmp_path)
    out, args = _command_args(command, tmp_path, trained_run, data)
    error = _one_error(runner.invoke(app, [*args, option, value]))
    assert error.startswith(f"error: {option} ") and "out of range" in error, error
    assert not out.exists() or not any(p.is_file() for p in out.rglob("*"))


NAMES = ("../x", "../../x", "/tmp/abs", "a/b", "..", ".", "a\\b")


@pytest.mark.parametrize("name", NAMES)
def test_run_name_cannot_escape_out(name, tmp_path):
    data = _base(tmp_path)
    before = set(tmp_path.rglob("*"))
    out, args = _command_args("train", tmp_path, None, data)
    error = _one_error(runner.invoke(app, [*args, "--name", name]))
    assert f"--name '{name}' is not a plain folder name" in error
    assert set(tmp_path.rglob("*")) == before


OUT_COMMANDS = ("train", "lr-find", "reproduce", "evaluate", "predict", "explain", "quantify", "synth")


@pytest.mark.parametrize("under", [False, True], ids=["out is a file", "out under a file"])
@pytest.mark.parametrize("command", OUT_COMMANDS)
def test_output_that_is_a_file(command, under, tmp_path, trained_run):
    data = _base(tmp_path)
    out, args = _command_args(command, tmp_path, trained_run, data)
    if command == "predict" and not under:  # predict's --out is a CSV file: a folder there is the mistake
        (out / "p.csv").mkdir(parents=True)
        assert f"'{out / 'p.csv'}' is a folder" in _one_error(runner.invoke(app, args))
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("a file")
    if under:
        args = [a.replace(str(out), str(out / "sub")) for a in args]
    error = _one_error(runner.invoke(app, args))
    assert f"'{out}' is a file, not a folder" in error, error
    assert out.read_text() == "a file"


@pytest.mark.parametrize("command", ["explain", "evaluate", "predict"])
def test_paths_of_the_wrong_kind_are_named_as_such(command, tmp_path, trained_run):
    """A folder named like an image is 'a folder', a run path that is a file is 'a file': never 'does not exist'."""
    if command == "explain":
        (tmp_path / "cell.png").mkdir()
        args = ["explain", str(tmp_path / "cell.png"), "--run", str(trained_run), "--device", "cpu", "--quiet"]
        expected = f"'{tmp_path / 'cell.png'}' is a folder, not an image file"
    else:
        (tmp_path / "run").write_text("not a run")
        args = (["evaluate", str(tmp_path / "run")] if command == "evaluate"
                else ["predict", str(_base(tmp_path)), "--run", str(tmp_path / "run"),
                      "--out", str(tmp_path / "p.csv")])
        expected = f"run '{tmp_path / 'run'}' is a file, not a run folder"
    assert expected in _one_error(runner.invoke(app, args))


@pytest.fixture(scope="module")
def predicted_in_a_process(tmp_path_factory, trained_run) -> Path:
    """`herlev predict` on 61 images (one with a long name) as its own process: stdout to `log.txt`, a TMPDIR
    (`tmp/`) and a cache folder (`cache/`) of its own."""
    import subprocess

    folder = tmp_path_factory.mktemp("process")
    data = folder / "data"
    write_image(data / ("a_cell_image_with_a_name_much_longer_than_eighty_columns_" + "x" * 40 + ".png"))
    for i in range(60):  # enough images for predict's progress bar (>= 50)
        write_image(data / f"c{i}.png", value=i)
    with open(folder / "log.txt", "w") as log:
        proc = _cli(["predict", str(data), "--run", str(trained_run), "--out", str(folder / "p.csv"), "--device",
                     "cpu"], folder, stdout=log, stderr=subprocess.STDOUT, env_extra={"COLUMNS": "80"})
        assert proc.wait(timeout=300) == 0, (folder / "log.txt").read_text()[-2000:]
    return folder


def test_output_redirected_to_a_file_has_no_bars_and_whole_names(predicted_in_a_process, tmp_path):
    """Logs: no carriage returns or bar characters when stdout is a file; a line longer than the terminal printed
    whole (COLUMNS=80), not wrapped."""
    import subprocess
    import sys

    text = (predicted_in_a_process / "log.txt").read_text()
    assert "\r" not in text and "━" not in text and "\x1b" not in text
    [summary] = [line for line in text.splitlines() if line.startswith("61 image(s)")]
    assert len(summary) > 80 and summary.endswith(f"written to {predicted_in_a_process / 'p.csv'}"), text  # unwrapped
    train_log = tmp_path / "train.txt"
    with open(train_log, "w") as f:  # no --quiet: the bars are left out because the output is a file
        subprocess.run([sys.executable, "-m", "herlev_cli.main", "train", "--data", str(_base(tmp_path)),
                        *TRAIN_FAST[:-1], "--epochs", "1", "--out", str(tmp_path / "runs"), "--device", "cpu"],
                       stdout=f, stderr=subprocess.STDOUT, check=True)
    text = train_log.read_text()
    assert "\r" not in text and "█" not in text and "run folder:" in text


# --- a full disk: one line naming the file and the space it needs, nothing half-written ------------------------------

FULL_DISK = ("train", "evaluate", "predict", "explain")


@pytest.mark.parametrize("command", FULL_DISK)
def test_full_disk(command, tmp_path, trained_run, monkeypatch):
    """Writes stop part-way: one line naming the file, what stopped it and the space it needs; no temporary file left.

    train: the checkpoint's safetensors write fails as on a full disk, inside fastai's callback; the
    others run under a file size limit (the kernel's EFBIG, through every writer: PNG, CSV, JSON).
    """
    import resource

    from safetensors import SafetensorError

    data = _base(tmp_path)
    out, args = _command_args(command, tmp_path, trained_run, data)
    if command == "explain":  # many images: the PNGs are what fills the disk
        args[1:2] = [str(p) for p in sorted(data.glob("*/*.BMP"))[:3]]
    if command == "train":
        def full(tensors, path, **kwargs):
            Path(path).write_bytes(b"\0" * 100)  # half-written
            raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
        monkeypatch.setattr("herlev_fa.training.checkpoint.save_file", full)
        result = runner.invoke(app, [*args, "--name", "r"])
        expected = f"cannot write '{out / 'r' / 'checkpoint'}': no space left on its device (it needs "
    else:
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2000, hard))  # bytes: every file above 2 KB fails
        try:
            result = runner.invoke(app, args)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        expected = "the file size limit (ulimit -f) is reached (it needs more than the "
    error = _one_error(result)
    assert expected in error and " free there); free space, or choose another output folder" in error, error
    assert not [p for p in tmp_path.rglob("*") if ".tmp" in p.name or p.name.startswith(".")], "temporary files left"
    assert not (out / "r" / "herlev.json").exists()
    for path in out.rglob("*.json"):  # what was finished is whole
        json.loads(path.read_text())


def test_full_disk_in_a_real_process(tmp_path, trained_run):
    """`ulimit -f 1` in the shell: predict's CSV cannot be written; one line, exit 2, no CSV and no temporary file."""
    import subprocess
    import sys

    data = tmp_path / "data"
    for i in range(40):  # a CSV above 1 KB
        write_image(data / f"cell_with_a_long_name_{i}.png", value=i)
    command = (f"ulimit -f 1; exec {sys.executable} -m herlev_cli.main predict '{data}' --run '{trained_run}' "
               f"--out '{tmp_path / 'p.csv'}' --device cpu")
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=300)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"cannot write '{tmp_path / 'p.csv'}': the file size limit (ulimit -f) is reached" in errors[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


# --- file names that are not UTF-8 in JSON output: escaped as the CSV keeps them, read back to the same bytes --------

@pytest.mark.parametrize("command", ["explain", "quantify", "predict"])
def test_undecodable_names_in_json(command, tmp_path, trained_run):
    raw = UNDECODABLE["latin-1"]
    root = _undecodable(raw)(tmp_path)
    folder = os.fsencode(root / "light_dysplastic")
    image = os.fsdecode(folder + b"/" + raw + b".bmp")
    shutil.copy(root / "light_dysplastic" / "lig0-d.bmp", os.fsdecode(folder + b"/" + raw + b"-d.bmp"))
    out, args = _command_args(command, tmp_path, trained_run, root)
    if command == "explain":
        args[1] = image
    result = runner.invoke(app, [*args, "--json"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    rows = json.loads(result.stdout)
    column = "path"
    names = [os.fsencode(row[column]) for row in rows if column in row]
    assert folder + b"/" + raw + b".bmp" in names, names


@pytest.mark.parametrize("folder", ["fig.png", "fig.csv"])
def test_compare_explanations_out_is_a_folder(folder, tmp_path, trained_run):
    """--out names the figure (and its .csv beside it): an existing folder there is said so, before any work."""
    (tmp_path / folder).mkdir()
    error = _one_error(runner.invoke(app, ["compare-explanations", str(trained_run), "--out", str(tmp_path / "fig.png"),
                                           "--steps", "4", "--device", "cpu"]))
    assert f"--out names the figure file to write, and '{tmp_path / folder}' is an existing folder" in error, error
    assert [p.name for p in tmp_path.iterdir()] == [folder]


# --- nothing left outside --out: torch's compiler cache, lr-find's scratch folder, a SIGTERM ------------------------

def _cli(args, tmp, env_extra=(), **kwargs):
    """The `herlev` command as its own process, with TMPDIR `tmp/tmp` and XDG_CACHE_HOME `tmp/cache`."""
    import subprocess
    import sys

    (tmp / "tmp").mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp / "tmp"), "XDG_CACHE_HOME": str(tmp / "cache"), "OMP_NUM_THREADS": "1",
           **dict(env_extra)}
    env.pop("TORCHINDUCTOR_CACHE_DIR", None)
    kwargs = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **kwargs}
    return subprocess.Popen([sys.executable, "-c", "from herlev_cli.main import main; main()", *args], env=env,
                            text=True, **kwargs)


def test_nothing_left_in_the_temporary_folder(predicted_in_a_process):
    """torch creates its compiler cache when timm imports torch._dynamo: in the user's cache folder, not in TMPDIR."""
    assert list((predicted_in_a_process / "tmp").iterdir()) == []
    assert (predicted_in_a_process / "cache" / "herlev_fa" / "torchinductor").is_dir()


@pytest.mark.parametrize("command", ["lr-find", "train"])
def test_sigterm_says_so_and_leaves_nothing(command, tmp_path):
    """SIGTERM (kill, timeout) mid-run: one line saying so, exit 143, scratch folders removed (TMPDIR and --out)."""
    import signal
    import time

    data = _base(tmp_path)
    out, args = _command_args(command, tmp_path, None, data)
    args += ["--name", "r", "--epochs", "50"] if command == "train" else []
    proc = _cli(args, tmp_path)
    started = time.time()
    while time.time() - started < 240:  # until the finder or the training is under way
        if list(out.glob(".lr_find-*")) or (out / "r" / "log.csv").exists() or proc.poll() is not None:
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    stderr = proc.stderr.read()
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("terminated (SIGTERM): "), stderr
    assert list((tmp_path / "tmp").iterdir()) == []
    assert not [p for p in out.rglob("*") if p.name.startswith((".lr_find-", ".checkpoint.tmp-"))]
    assert not (out / "r" / "herlev.json").exists()


@pytest.mark.parametrize("command", ["lr-find", "train"])
def test_batch_larger_than_the_data(command, tmp_path):
    """--bs 500 on a few cells: batches of what there is, said at once; lr-find finishes like any other batch size."""
    import time

    data = _base(tmp_path)
    out, args = _command_args(command, tmp_path, None, data)
    started = time.time()
    result = runner.invoke(app, [*args, "--bs", "500"])
    assert result.exit_code == 0 and "Traceback" not in result.output, result.output
    assert time.time() - started < 240
    warnings = [line for line in result.output.splitlines() if line.startswith("warning: --bs 500 is more than the ")]
    assert warnings and "training images of fold 0: batches of 7 are used" in warnings[0], result.output


# --- a class map no run could be loaded with: refused before any work, by the rule the run loader applies ------------

CLASS_MAPS = {
    "NaN severity": ("normal_superficiel: 0\nlight_dysplastic: .nan\n", "severities [0.0, nan] are not 2 finite"),
    "negative severity": ("normal_superficiel: 0\nlight_dysplastic: -1\n", "severities [-1.0, 0.0] are not 2 finite"),
    "severity beyond 1000": ("normal_superficiel: 0\nlight_dysplastic: 1000000\n", "in 0..1000, one per class"),
    "every folder one class": ("normal_superficiel: {class: cell, severity: 1}\nlight_dysplastic: {class: cell, "
                               "severity: 1}\n", "maps every folder to one class ('cell'): a classifier needs two"),
}


@pytest.mark.parametrize("case", CLASS_MAPS)
@pytest.mark.parametrize("command", ["train", "lr-find"])
def test_class_map_that_makes_no_usable_run(case, command, tmp_path):
    text, reason = CLASS_MAPS[case]
    data = herlev_folder(tmp_path / "data", folders={"normal_superficiel": 2, "light_dysplastic": 2})
    (tmp_path / "map.yaml").write_text(text)
    out, args = _command_args(command, tmp_path, None, data)
    error = _one_error(runner.invoke(app, [*args, "--classes", str(tmp_path / "map.yaml")]))
    assert f"class map '{tmp_path / 'map.yaml'}'" in error and reason in error, error
    assert not out.exists()


def test_demo_checks_its_options_before_writing_data(tmp_path):
    error = _one_error(runner.invoke(app, ["demo", "--out", str(tmp_path / "demo"), "--epochs", "0"]))
    assert error.startswith("error: --epochs 0 is out of range")
    assert not (tmp_path / "demo").exists()


def test_run_without_integrity_hashes_loads_and_says_so(trained_run, tmp_path):
    """A run folder written before the hashes were recorded: it still predicts, with a warning that edits go unseen."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    meta = json.loads((run / "herlev.json").read_text())
    assert set(meta.pop("integrity")) == {"weights_sha256", "classes_sha256"}
    (run / "herlev.json").write_text(json.dumps(meta))
    image = next(Path(meta["data_root"]).rglob("*.BMP"))
    result = runner.invoke(app, ["predict", str(image), "--run", str(run), "--out", str(tmp_path / "p.csv"),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"warning: run '{run}' records no hashes of its weights and classes" in result.output
    assert (tmp_path / "p.csv").is_file()


# --- messages that say what is wrong, not something near it ----------------------------------------------------------

def test_symlink_loop_is_called_one(tmp_path, trained_run):
    os.symlink("loop.png", tmp_path / "loop.png")
    os.symlink("run", tmp_path / "run")
    error = _one_error(runner.invoke(app, ["predict", str(tmp_path / "loop.png"), "--run", str(trained_run), "--out",
                                           str(tmp_path / "p.csv"), "--device", "cpu"]))
    assert f"'{tmp_path / 'loop.png'}' is a symbolic link loop" in error, error
    error = _one_error(runner.invoke(app, ["evaluate", str(tmp_path / "run"), "--device", "cpu"]))
    assert f"run folder '{tmp_path / 'run'}' is a symbolic link loop" in error, error
    os.symlink(tmp_path / "gone", tmp_path / "dangling.png")
    error = _one_error(runner.invoke(app, ["predict", str(tmp_path / "dangling.png"), "--run", str(trained_run),
                                           "--out", str(tmp_path / "p.csv"), "--device", "cpu"]))
    assert f"is a symbolic link whose target '{tmp_path / 'gone'}' does not exist" in error, error


@pytest.mark.parametrize("command", ["evaluate", "quantify", "train --classes"])
def test_unknown_class_folder_remedy_fits_the_command(command, tmp_path, trained_run):
    """`--classes` is suggested only where it exists and was not passed; a run's classes are fixed."""
    data = _unknown_class(tmp_path)
    out, args = _command_args(command.split()[0], tmp_path, trained_run, data)
    if command == "evaluate":
        args += ["--data", str(data), "--split", "all"]
    if command == "train --classes":
        folders = sorted(p.name for p in data.iterdir() if p.name != "koilocytes")
        (tmp_path / "map.yaml").write_text("".join(f"{f}: {i % 2}\n" for i, f in enumerate(folders)))
        args += ["--classes", str(tmp_path / "map.yaml")]
    error = _one_error(runner.invoke(app, args))
    assert "koilocytes" in error and "--classes" not in error, error
    expected = "add it to the class map map.yaml" if command == "train --classes" else \
        f"the run '{trained_run}' was trained on the classes listed; remove the folder"
    assert expected in error, error


def test_weights_with_pickled_objects_name_them_without_torch_warnings(tmp_path):
    import pickle

    import timm
    import torch

    data = _base(tmp_path)
    state = timm.create_model("test_resnet", num_classes=7).state_dict()
    torch.save({"state_dict": state, "best_acc": np.float64(0.9)}, tmp_path / "ckpt.pth")
    out, args = _command_args("train", tmp_path, None, data)
    result = runner.invoke(app, [*args, "--weights", str(tmp_path / "ckpt.pth")])
    error = _one_error(result)
    assert "besides tensors it holds pickled Python objects (numpy." in error, error
    assert "save the weights alone (torch.save(model.state_dict(), PATH))" in error and "plain state dict" not in error
    torch.save(state, tmp_path / "plain.pth", pickle_protocol=pickle.HIGHEST_PROTOCOL)  # torch warns, then refuses
    result = runner.invoke(app, [*args, "--weights", str(tmp_path / "plain.pth")])
    assert "it was written with pickle protocol 4 or higher" in _one_error(result)
    assert "Detected pickle protocol" not in result.output and "warning" not in result.output, result.output
    torch.save(state, tmp_path / "plain.pth")  # a plain state dict, the default protocol: loads
    result = runner.invoke(app, [*args, "--weights", str(tmp_path / "plain.pth"), "--name", "ok"])
    assert result.exit_code == 0, result.output


def test_fold_beyond_the_runs_folds_is_named(tmp_path, trained_run):
    """fold0 and fold<K+1> of a K-fold run: the second is named as not a fold of it, and the folds missing."""
    n = json.loads((trained_run / "herlev.json").read_text())["n_folds"]
    cv = tmp_path / "cv"
    shutil.copytree(trained_run, cv / "fold0")
    shutil.copytree(trained_run, cv / f"fold{n + 1}")
    error = _one_error(runner.invoke(app, ["evaluate", str(cv), "--device", "cpu"]))
    absent = ", ".join(f"fold{k}" for k in range(1, n))
    assert (f"'{cv / f'fold{n + 1}'}' is not a fold of this {n}-fold run (its folds are fold0 .. fold{n - 1}; "
            f"{absent} missing)") in error, error
    shutil.rmtree(cv / f"fold{n + 1}")
    shutil.copytree(trained_run, cv / "fold1")  # fold 0's run under fold1/
    error = _one_error(runner.invoke(app, ["evaluate", str(cv), "--device", "cpu"]))
    assert f"fold model '{cv / 'fold1'}' holds the run of fold 0 (its herlev.json): the folder was renamed" in error


def test_resume_of_a_folder_that_is_no_run(tmp_path):
    data = _base(tmp_path)
    out, args = _command_args("train", tmp_path, None, data)
    (out / "notes").mkdir(parents=True)
    (out / "notes" / "todo.txt").write_text("not a run")
    error = _one_error(runner.invoke(app, [*args, "--resume", "--name", "notes"]))
    assert f"nothing to resume: '{out / 'notes'}' is not a run folder" in error, error
    assert sorted(p.name for p in (out / "notes").iterdir()) == ["todo.txt"]


@pytest.mark.parametrize("command", ["train", "lr-find", "evaluate"])
def test_empty_out_is_refused(command, tmp_path, trained_run, monkeypatch):
    monkeypatch.chdir(tmp_path)
    data = _base(tmp_path / "d")
    out, args = _command_args(command, tmp_path, trained_run, data)
    args[args.index(str(out))] = ""
    before = set(tmp_path.iterdir())
    error = _one_error(runner.invoke(app, args))
    assert error == "error: --out is empty: name the output folder (. for the current one)"
    assert set(tmp_path.iterdir()) == before


def test_saved_run_records_hashes_of_what_it_saved(trained_run):
    """herlev.json's hashes are those of the files beside it; config.json still states the image size."""
    from herlev_fa.runs import classes_sha256, file_sha256

    meta = json.loads((trained_run / "herlev.json").read_text())
    assert meta["integrity"] == {"weights_sha256": file_sha256(trained_run / "model.safetensors"),
                                 "classes_sha256": classes_sha256(meta["task"])}
    size = meta["image_size"]
    assert json.loads((trained_run / "config.json").read_text())["pretrained_cfg"]["input_size"] == [3, size, size]

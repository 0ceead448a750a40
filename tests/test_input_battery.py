"""The bad-input battery: each data case x each command that reads data, with the behaviour expected.

The table `CASES` is the contract, and docs/bad_input.md documents it case by case:
- "works": exit 0 and the command's output written;
- "warns": exit 0 with a warning naming the file (the file skipped);
- "error": exit 2, one line `error: ...` naming the file or folder, no traceback, no output written.
"""

import json
import os
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
    "mask of another size than its image": (_mask_size, "lig0-d.bmp", dict(train="works", predict="works",
                                                                            quantify="error")),
    "mask with unexpected colours": (_mask_colours, "lig0-d.bmp", dict(train="works", predict="works",
                                                                        quantify="error")),
    "image without mask": (_no_mask, "lig0.BMP", dict(train="works", predict="works", quantify="warns")),
    "empty class folder": (_empty_class, "carcinoma_in_situ", dict(train="warns", evaluate="warns", quantify="works")),
    "unknown class folder": (_unknown_class, "koilocytes", dict(train="error", reproduce="error", evaluate="error",
                                                                lr_find="error",
                                                                quantify="error")),
    "duplicate file names across classes": (_duplicates, None, dict(train="works", evaluate="works", predict="works",
                                                                     explain="works")),
    "paths with spaces and non-ASCII characters": (_unicode, None, dict(train="works", evaluate="works",
                                                                         predict="works", explain="works",
                                                                         quantify="works")),
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
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 17, 8, min(h, 65535), min(w, 65535), 3) + b"\x01\x11\0\x02\x11\0\x03\x11\0"
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
UNDECODABLE = {"latin-1": b"c\xe9llule", "lone bytes": b"\xff\xfe", "cut sequence": b"cell\xc3", "overlong": b"\xc0\xaf"}


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
CASES["single-class data set"] = (_single_class, "cannot be computed", dict(train="warns", evaluate="warns"))

TRAIN = ["--arch", "test_resnet", "--no-pretrained", "--size", "32", "--bs", "4", "--folds", "2", "--quiet"]


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
        args = ["evaluate", str(trained_run), "--data", str(root), "--out", str(out), "--device", "cpu"]
    elif command == "explain":
        images = [str(p) for p in sorted(root.rglob("*.*")) if p.is_file() and not p.name.lower().endswith(("-d.bmp", "-d.png"))]
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

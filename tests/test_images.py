"""Decoding any image file into RGB uint8, and the letterboxed cache."""

import numpy as np
import pytest

from helpers import write_image
from herlev_fa.data.augment import letterbox
from herlev_fa.data.images import decode_all, load_image
from herlev_fa.errors import HerlevError


@pytest.mark.parametrize("name,mode", [("a.bmp", "RGB"), ("a.BMP", "RGB"), ("a.png", "RGBA"), ("a.png", "L"),
                                       ("a.tif", "I;16"), ("a.png", "P"), ("a.jpg", "RGB"), ("a.tiff", "RGB")])
def test_load_image_modes_give_rgb_uint8(tmp_path, name, mode):
    arr = load_image(write_image(tmp_path / name, h=20, w=24, mode=mode, value=100))
    assert arr.shape == (20, 24, 3) and arr.dtype == np.uint8
    expected = (np.arange(20 * 24).reshape(20, 24) % 50 + 100)
    error = np.abs(arr[:, :, 1].astype(int) - expected)
    if name.endswith(".jpg"):  # lossy: close on average
        assert error.mean() < 3
    else:
        assert error.max() == 0


def test_sixteen_bit_scales_by_range(tmp_path):
    from PIL import Image

    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "w.png")
    Image.fromarray(np.full((4, 4), 257 * 40, np.uint16)).save(tmp_path / "d.png")
    assert load_image(tmp_path / "w.png").max() == 255
    assert load_image(tmp_path / "d.png").max() == 40


def test_bad_files_name_the_file(tmp_path):
    (tmp_path / "empty.bmp").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    good = write_image(tmp_path / "t.jpg", h=64, w=64)
    (tmp_path / "trunc.jpg").write_bytes(good.read_bytes()[:300])
    for name, reason in [("empty.bmp", "empty file"), ("text.jpg", "cannot identify"), ("trunc.jpg", "truncated"),
                         ("missing.png", "does not exist")]:
        with pytest.raises(HerlevError, match=f"(?i){name}.*{reason}|{reason}.*{name}") as e:
            load_image(tmp_path / name)
        assert "\n" not in str(e.value)


def test_letterbox_keeps_aspect_and_pads_square():
    img = np.zeros((50, 100, 3), np.uint8)
    img[:, :, 0] = 200
    mask = np.ones((50, 100), np.uint8)
    out = letterbox(32)(image=img, mask=mask)
    assert out["image"].shape == (32, 32, 3) and out["mask"].shape == (32, 32)
    assert (out["image"][:, :, 0] == 200).all()  # edge-repeat padding keeps the colour
    assert out["mask"].sum() == 32 * 32  # padding repeats the edge mask value too


def test_decode_all_caches_letterboxed_and_skips_bad_only_when_asked(tmp_path):
    a = write_image(tmp_path / "a.png", h=30, w=40)
    bad = tmp_path / "bad.png"
    bad.write_text("x")
    with pytest.raises(HerlevError, match="bad.png.*--skip-bad"):
        decode_all([str(a), str(bad)], size=16, progress=False)
    with pytest.warns(UserWarning, match="bad.png"):
        cache, skipped = decode_all([str(a), str(bad)], size=16, skip_bad=True, progress=False)
    assert list(cache) == [str(a)] and skipped == [str(bad)]
    assert cache[str(a)].shape == (16, 16, 3)

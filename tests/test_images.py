"""Decoding any image file into RGB uint8, and the letterboxed cache."""

import numpy as np
import pytest

from helpers import write_image
from herlev_fa.data.images import letterbox
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


@pytest.mark.parametrize("size", [16, 32, 48, 224])
def test_letterbox_is_albumentations_pixel_for_pixel(size):
    """The OpenCV letterbox equals albumentations' LongestMaxSize + PadIfNeeded it replaced, image and mask,
    for shapes up and down, odd and even padding, square and 1-pixel-thin."""
    import albumentations as A
    import cv2

    theirs = A.Compose([A.LongestMaxSize(max_size=size, interpolation=cv2.INTER_AREA),
                        A.PadIfNeeded(min_height=size, min_width=size, border_mode=cv2.BORDER_REPLICATE)])
    rng = np.random.default_rng(size)
    shapes = [(size, size), (1, 1), (1, 97), (97, 1), (50, 100), (101, 37), (37, 101), (300, 299), (13, 17),
              *[tuple(rng.integers(1, 400, 2)) for _ in range(20)]]
    for h, w in shapes:
        img = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        mask = rng.integers(0, 4, (h, w), dtype=np.uint8)
        ours, want = letterbox(size)(image=img, mask=mask), theirs(image=img, mask=mask)
        assert ours["image"].shape == (size, size, 3) and ours["mask"].shape == (size, size), (h, w)
        np.testing.assert_array_equal(ours["image"], want["image"], err_msg=f"{h}x{w}")
        np.testing.assert_array_equal(ours["mask"], want["mask"], err_msg=f"{h}x{w}")


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


def _png_with_sbit(path, arr, bits):
    """A 16-bit grey PNG of `arr` whose sBIT chunk declares `bits` significant bits (as 12-bit cameras write)."""
    import struct
    import zlib

    from PIL import Image

    Image.fromarray(arr).save(path)
    raw = path.read_bytes()
    chunk = struct.pack(">I", 1) + b"sBIT" + bytes([bits]) + struct.pack(">I", zlib.crc32(b"sBIT" + bytes([bits])))
    at = 8 + 8 + 13 + 4  # signature, IHDR
    path.write_bytes(raw[:at] + chunk + raw[at:])
    return path


def test_high_depth_grey_images_decode_by_their_real_range(tmp_path):
    """Float 0..1, 12-bit in 16-bit, 32-bit integer holding 16-bit data: each read as its range, not clipped."""
    from PIL import Image

    ramp = np.arange(20 * 24).reshape(20, 24) % 50 / 49  # 0..1
    cases = {
        "float.tif": ramp.astype(np.float32),
        "twelve.png": np.round(ramp * 4095).astype(np.uint16),  # no sBIT: inferred from the largest value
        "twelve.tif": np.round(ramp * 4095).astype(np.uint16),
        "int32.tif": np.round(ramp * 65535).astype(np.int32),
        "eight_in_sixteen.png": np.round(ramp * 255).astype(np.uint16),
    }
    for name, arr in cases.items():
        Image.fromarray(arr).save(tmp_path / name)
    cases["sbit.png"] = np.round(ramp * 1000).astype(np.uint16)  # 12 significant bits declared, dark content
    _png_with_sbit(tmp_path / "sbit.png", cases["sbit.png"], 12)
    for name in cases:
        grey = load_image(tmp_path / name)[:, :, 0].astype(int)
        want = np.round(ramp * (1000 / 4095 if name == "sbit.png" else 1) * 255)
        assert np.abs(grey - want).max() <= 1, name


@pytest.mark.parametrize("name,values,reason", [
    ("int32.tif", np.arange(480, dtype=np.int32) * 2000, "mode I, 32-bit integer, values 0..958000): beyond 16 bits"),
    ("signed.tif", np.arange(480, dtype=np.int32) - 240, "values -240..239): negative values"),
    ("float.tif", np.arange(480, dtype=np.float32) / 100,
     "mode F, 32-bit float, values 0..4.79): a float image is read as 0..1"),
    ("nan.tif", np.full(480, np.nan, np.float32), "NaN or infinite"),
    ("flat.tif", np.arange(480, dtype=np.float32) / 480e3, "decodes to a single grey level"),
    ("flat16.png", (30000 + np.arange(480) % 100).astype(np.uint16), "decodes to a single grey level"),
])
def test_high_depth_values_that_fit_no_range_are_refused(tmp_path, name, values, reason):
    from PIL import Image

    Image.fromarray(values.reshape(20, 24)).save(tmp_path / name)
    with pytest.raises(HerlevError) as e:
        load_image(tmp_path / name)
    assert f"'{tmp_path / name}'" in str(e.value) and reason in str(e.value), str(e.value)

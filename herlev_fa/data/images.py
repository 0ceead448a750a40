"""Decoding image files into RGB uint8 arrays, and the in-memory cache of letterboxed images.

What lives here: `load_image` (any of bmp/jpg/png/tif; RGB, RGBA, grayscale, palette, 16/32-bit, float),
`letterbox` (deterministic: keeps the aspect ratio and pads to a square, with a
mask carried through the same geometry for the explanation check), `Letterboxed` (one image
decoded and letterboxed, or read from the cache), `decode_all`, which decodes and letterboxes
every item once so that epochs after the first do no decoding (Herlev is under 100 MB decoded),
`normalise`, the validation input of letterboxed images, and `preprocess`, the exact input a
run's network sees (for using its weights in plain timm). What does not: random augmentation
(``herlev_fa.data.augment``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from typing import Any

from herlev_fa.errors import HerlevError, missing
from herlev_fa.progress import progress_bar

# Bit depths a grey image in a 16- or 32-bit container is read as, when the file does not say: the
# smallest that holds its largest value (8-bit data saved wide, 12-bit camera data, full 16-bit).
INFERRED_BITS = (8, 12, 16)


def _png_significant_bits(path: Path) -> int | None:
    """The grey significant bits a PNG declares in its sBIT chunk (a 12-bit camera's 16-bit PNG), or None."""
    import struct

    try:
        with open(path, "rb") as f:
            if f.read(8) != b"\x89PNG\r\n\x1a\n":
                return None
            while True:
                head = f.read(8)
                if len(head) < 8:
                    return None
                length, kind = struct.unpack(">I4s", head)
                if kind == b"sBIT":
                    data = f.read(length)
                    return data[0] if data and 1 <= data[0] <= 16 else None
                if kind in (b"IDAT", b"IEND"):
                    return None
                f.seek(length + 4, 1)  # data and CRC
    except OSError:
        return None


def declared_max(img: Image.Image, path: Path) -> float | None:
    """The largest value the file says its samples can take (PNG sBIT, TIFF MaxSampleValue), or None."""
    bits = _png_significant_bits(path) if img.format == "PNG" else None
    if bits:
        return float(2 ** bits - 1)
    tags = getattr(img, "tag_v2", None)
    if tags is not None and 281 in tags:  # MaxSampleValue
        value = tags[281]
        value = value[0] if isinstance(value, tuple) else value
        return float(value) if isinstance(value, (int, float)) and value > 0 else None
    return None


def grey_to_uint8(arr: np.ndarray, mode: str, path: Path, full: float | None = None) -> np.ndarray:
    """A high-depth grey image [H, W] (16/32-bit integer or float) as uint8 [H, W], by the image's real range.

    Floats are read as 0..1; integers by `full` (the largest value the file declares) or else by the
    smallest of `INFERRED_BITS` that holds their largest value. Values that fit no such range are
    refused, and so is an image whose levels all collapse to one value: predicting on it would be
    predicting on a blank.

    Raises:
        HerlevError: non-finite, negative or out-of-range values, or an image that decodes to one value.
    """
    values = arr.astype(np.float64)  # [H, W]
    kind = "32-bit float" if mode == "F" else "16-bit" if mode.startswith("I;16") else "32-bit integer"
    what = f"image '{path}' (mode {mode}, {kind}, values {_span(values)})"
    if not np.isfinite(values).all():
        raise HerlevError(f"cannot read {what}: it holds NaN or infinite values; save it as 8- or 16-bit")
    low, high = float(values.min()), float(values.max())
    if low < 0:
        raise HerlevError(f"cannot read {what}: negative values have no intensity meaning; save it as unsigned 8- "
                          "or 16-bit")
    if mode == "F":
        if high > 1:
            raise HerlevError(f"cannot read {what}: a float image is read as 0..1; save it scaled to 0..1, or as "
                              "8- or 16-bit")
        full = 1.0
    elif full is None or full < high:
        if high > 65535:
            raise HerlevError(f"cannot read {what}: beyond 16 bits; save it as 8- or 16-bit")
        full = float(2 ** next(b for b in INFERRED_BITS if high < 2 ** b) - 1)
    grey = np.clip(values / full * 255.0 + 0.5, 0, 255).astype(np.uint8)
    if high > low and grey.min() == grey.max():
        raise HerlevError(f"cannot read {what}: its values span less than one 8-bit step of its range 0..{full:g}, "
                          "so it decodes to a single grey level")
    return grey


def _span(values: np.ndarray) -> str:
    return f"{values.min():g}..{values.max():g}" if np.isfinite(values).all() else "not all finite"


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8, shape [H, W, 3].

    Alpha is dropped, grayscale and palette images become RGB, and 16-bit, 32-bit and float grey
    images are scaled by their real range (`grey_to_uint8`).

    Raises:
        HerlevError: the file is missing, empty, truncated or not an image, or its values fit no range.
    """
    path = Path(path)
    if path.is_dir():
        raise HerlevError(f"'{path}' is a folder, not an image file; pass the images in it, or the folder where "
                          "a folder is accepted")
    try:
        with Image.open(path) as img:
            if img.width * img.height > (Image.MAX_IMAGE_PIXELS or math.inf):  # Pillow only warns up to twice that
                raise Image.DecompressionBombError(f"Image size ({img.width} x {img.height} pixels) exceeds limit of "
                                                   f"{Image.MAX_IMAGE_PIXELS} pixels.")
            img.load()
            if img.mode == "F" or img.mode.startswith("I"):  # I, I;16, I;16B, I;16S ...
                # wider than 8 bits: Pillow's own conversion clips (an int32 image turns white) or
                # truncates (a float 0..1 image turns black), so scale by the real range here
                gray = grey_to_uint8(np.asarray(img), img.mode, path, declared_max(img, path))
                return np.repeat(gray[:, :, None], 3, axis=2)
            rgb = img.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise HerlevError(missing(path, "image")) from None
    except Image.DecompressionBombError as e:  # a header declaring billions of pixels: refused before decoding
        raise HerlevError(f"cannot read image '{path}': {e} Replace it with a real cell image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = "empty file" if path.is_file() and path.stat().st_size == 0 else str(e).split("\n")[0]
        raise HerlevError(f"cannot read image '{path}': {reason}") from None


def letterbox(size: int) -> Callable[..., dict[str, np.ndarray]]:
    """Scale the longer side to `size` and pad to size x size by repeating the edge pixels.

    Edge repeat rather than a constant keeps the padding the colour of the slide background.
    Masks passed along get nearest-neighbour resizing and the same padding. Called like an
    albumentations transform, `letterbox(size)(image=img, mask=mask)` -> {"image": [S, S, 3], "mask": [S, S]},
    and pixel for pixel albumentations' `LongestMaxSize(size, INTER_AREA)` + `PadIfNeeded(size, size,
    BORDER_REPLICATE)` (tests/test_images.py), in OpenCV alone: loading a run for prediction does not
    import albumentations.
    """

    def apply(image: np.ndarray, mask: np.ndarray | None = None) -> dict[str, np.ndarray]:
        height, width = image.shape[:2]
        scale = size / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
        top, left = (size - new_h) // 2, (size - new_w) // 2

        def fit(a: np.ndarray, interpolation: int) -> np.ndarray:
            if a.shape[:2] != (new_h, new_w):
                a = cv2.resize(a, (new_w, new_h), interpolation=interpolation)
            return cv2.copyMakeBorder(a, top, size - new_h - top, left, size - new_w - left, cv2.BORDER_REPLICATE)

        out = {"image": fit(image, cv2.INTER_AREA)}
        if mask is not None:
            out["mask"] = fit(mask, cv2.INTER_NEAREST)
        return out

    return apply


class Letterboxed:
    """An image as the cache holds it: path -> uint8 [size, size, 3].

    Decoded by `load_image` and letterboxed by `letterbox`, or taken from `cache` (path ->
    image, from `decode_all` at the same size) when it is there. A class rather than a closure, so
    that fastai can pickle it into DataLoader worker processes (the DataBlock's item getter).

    Raises:
        HerlevError: the image is not in `cache` and cannot be read.
    """

    def __init__(self, size: int, cache: dict[str, np.ndarray] | None = None):
        self.size, self.cache = size, {} if cache is None else cache  # plain data: picklable into workers

    def __call__(self, path: str | Path) -> np.ndarray:
        found = self.cache.get(str(path))
        if found is not None and found.shape[:2] == (self.size, self.size):
            return found
        return letterbox(self.size)(image=load_image(path))["image"]


def decode_all(paths: Iterable[str], size: int, skip_bad: bool = False,
               progress: bool = True) -> tuple[dict[str, np.ndarray], list[str]]:
    """Decode and letterbox every image once: path -> uint8 [size, size, 3].

    Returns:
        The cache, and the paths that could not be read (only with `skip_bad`; each also warned).

    Raises:
        HerlevError: an image cannot be read and `skip_bad` is False (the message names the file).
    """
    paths = list(paths)
    box = Letterboxed(size)
    cache: dict[str, np.ndarray] = {}
    bad: list[str] = []
    bar, advance = progress_bar(progress and len(paths) >= 50, "decoding images", len(paths))
    with bar:
        for path in paths:
            try:
                cache[path] = box(path)
            except HerlevError as e:
                if not skip_bad:
                    raise HerlevError(f"{e}; fix or remove it, or pass --skip-bad to skip unreadable images") from None
                bad.append(path)
                warnings.warn(f"skipped: {e}", stacklevel=2)
            advance(1)
    return cache, bad


def normalise(images: np.ndarray | Tensor, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Letterboxed uint8 images [B, S, S, 3] -> float [B, 3, S, S], `(x / 255 - mean) / std`.

    The same arithmetic as fastai's `IntToFloatTensor` followed by `Normalize.from_stats`. A
    tensor input is normalised on its own device (copy uint8 to the GPU, not four times as many float bytes).
    """
    u8 = images if isinstance(images, Tensor) else torch.from_numpy(np.ascontiguousarray(images))
    x = u8.permute(0, 3, 1, 2).float() / 255.0  # [B, 3, S, S]
    m = torch.tensor(list(mean), dtype=torch.float32, device=x.device)[None, :, None, None]  # [1, 3, 1, 1]
    s = torch.tensor(list(std), dtype=torch.float32, device=x.device)[None, :, None, None]
    return (x - m) / s


def preprocess(images: Iterable[str | Path | np.ndarray] | str | Path | np.ndarray, config: Any) -> Tensor:
    """Images -> the network input [B, 3, S, S] float32 of a run, exactly as `herlev predict` prepares it.

    Each image (a file, or an RGB uint8 array [H, W, 3]) is decoded by `load_image`, its longer
    side scaled to S (OpenCV's INTER_AREA) and padded to S x S by repeating the edge pixels
    (`letterbox`), then scaled to [0, 1] and normalised with the run's mean and std. No
    centre crop and no bicubic resize: timm's default eval transform differs, and its
    predictions do too.

    Args:
        config: where S, mean and std come from: a run folder, its `config.json`, or timm's
            `pretrained_cfg` dict (`model.pretrained_cfg` of `timm.create_model("local-dir:RUN")`).

    Raises:
        HerlevError: an unreadable image, or a config without input_size, mean and std.
    """
    import json

    if isinstance(config, (str, Path)):
        path = Path(config) / "config.json" if Path(config).is_dir() else Path(config)
        try:
            config = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise HerlevError(f"cannot read the run's timm config '{path}': {e}") from None
    cfg = config.get("pretrained_cfg", config) if isinstance(config, dict) else {}
    try:
        size, mean, std = int(cfg["input_size"][-1]), [float(m) for m in cfg["mean"]], [float(s) for s in cfg["std"]]
    except (KeyError, TypeError, ValueError, IndexError):
        raise HerlevError("the config has no input_size, mean and std: pass a run folder, its config.json or "
                          "model.pretrained_cfg") from None
    if isinstance(images, (str, Path, np.ndarray)):
        images = [images]
    resize = letterbox(size)
    boxed = [resize(image=im if isinstance(im, np.ndarray) else load_image(im))["image"] for im in images]
    return normalise(np.stack(boxed), mean, std)  # [B, 3, S, S]

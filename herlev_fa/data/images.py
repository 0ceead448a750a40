"""Decoding image files into RGB uint8 arrays, and the in-memory cache of letterboxed images.

What lives here: `load_image` (any of bmp/jpg/png/tif; RGB, RGBA, grayscale, palette, 16-bit)
and `decode_all`, which decodes and letterboxes every item once so that epochs after the first
do no decoding (Herlev is under 100 MB decoded). What does not: random augmentation
(``herlev_fa.data.augment``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from herlev_fa.errors import HerlevError
from herlev_fa.progress import progress_bar


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file as RGB uint8, shape [H, W, 3].

    Alpha is dropped, grayscale and palette images become RGB, 16-bit images are scaled to 8 bits.

    Raises:
        HerlevError: the file is missing, empty, truncated or not an image.
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
            if img.mode in ("I;16", "I;16B", "I;16L", "I"):
                # 16-bit (or 32-bit int) grayscale: scale by the dtype's range, not the image's max,
                # so that the same intensity maps to the same value in every image
                arr = np.asarray(img)
                scale = 65535.0 if img.mode.startswith("I;16") or arr.max() > 255 else 255.0
                gray = np.clip(arr.astype(np.float64) / scale * 255.0 + 0.5, 0, 255).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            rgb = img.convert("RGB")
            return np.asarray(rgb, dtype=np.uint8).copy()
    except FileNotFoundError:
        raise HerlevError(f"image '{path}' does not exist") from None
    except Image.DecompressionBombError as e:  # a header declaring billions of pixels: refused before decoding
        raise HerlevError(f"cannot read image '{path}': {e} Replace it with a real cell image") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        reason = "empty file" if path.is_file() and path.stat().st_size == 0 else str(e).split("\n")[0]
        raise HerlevError(f"cannot read image '{path}': {reason}") from None


def decode_all(paths: Iterable[str], size: int, skip_bad: bool = False,
               progress: bool = True) -> tuple[dict[str, np.ndarray], list[str]]:
    """Decode and letterbox every image once: path -> uint8 [size, size, 3].

    Returns:
        The cache, and the paths that could not be read (only with `skip_bad`; each also warned).

    Raises:
        HerlevError: an image cannot be read and `skip_bad` is False (the message names the file).
    """
    from herlev_fa.data.augment import letterbox

    paths = list(paths)
    resize = letterbox(size)
    cache: dict[str, np.ndarray] = {}
    bad: list[str] = []
    bar, advance = progress_bar(progress and len(paths) >= 50, "decoding images", len(paths))
    with bar:
        for path in paths:
            try:
                cache[path] = resize(image=load_image(path))["image"]
            except HerlevError as e:
                if not skip_bad:
                    raise HerlevError(f"{e}; fix or remove it, or pass --skip-bad to skip unreadable images") from None
                bad.append(path)
                warnings.warn(f"skipped: {e}", stacklevel=2)
            advance(1)
    return cache, bad

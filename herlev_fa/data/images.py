"""Decoding image files into RGB uint8 arrays, and the in-memory cache of letterboxed images.

What lives here: `load_image` (any of bmp/jpg/png/tif; RGB, RGBA, grayscale, palette, 16-bit),
`decode_all`, which decodes and letterboxes every item once so that epochs after the first
do no decoding (Herlev is under 100 MB decoded), and `preprocess`, the exact input a run's
network sees (for using its weights in plain timm). What does not: random augmentation
(``herlev_fa.data.augment``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from typing import TYPE_CHECKING, Any

from herlev_fa.errors import HerlevError
from herlev_fa.progress import progress_bar

if TYPE_CHECKING:
    from torch import Tensor


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


def preprocess(images: Iterable[str | Path | np.ndarray] | str | Path | np.ndarray, config: Any) -> "Tensor":
    """Images -> the network input [B, 3, S, S] float32 of a run, exactly as `herlev predict` prepares it.

    Each image (a file, or an RGB uint8 array [H, W, 3]) is decoded by `load_image`, its longer
    side scaled to S (OpenCV's INTER_AREA) and padded to S x S by repeating the edge pixels
    (`augment.letterbox`), then scaled to [0, 1] and normalised with the run's mean and std. No
    centre crop and no bicubic resize: timm's default eval transform differs, and its
    predictions do too.

    Args:
        config: where S, mean and std come from: a run folder, its `config.json`, or timm's
            `pretrained_cfg` dict (`model.pretrained_cfg` of `timm.create_model("local-dir:RUN")`).

    Raises:
        HerlevError: an unreadable image, or a config without input_size, mean and std.
    """
    import json

    import torch

    from herlev_fa.data.augment import letterbox

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
    x = torch.from_numpy(np.stack(boxed)).permute(0, 3, 1, 2).float() / 255.0  # [B, 3, S, S] in [0, 1]
    return (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)

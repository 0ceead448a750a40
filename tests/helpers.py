"""Small builders for test data: image files in any mode, Herlev-style folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from herlev_fa.labels import BACKGROUND_RGB, CYTOPLASM_RGB, NUCLEUS_RGB


def write_image(path: Path, h: int = 20, w: int = 24, mode: str = "RGB", value: int = 120) -> Path:
    """An image file of the given PIL mode, filled with `value` (plus a gradient so it is not flat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = (np.arange(h * w).reshape(h, w) % 50 + value).astype(np.uint8)
    if mode == "RGB":
        img = Image.fromarray(np.stack([base] * 3, axis=2))
    elif mode == "RGBA":
        img = Image.fromarray(np.dstack([base, base, base, np.full_like(base, 128)]), "RGBA")
    elif mode == "L":
        img = Image.fromarray(base, "L")
    elif mode == "I;16":
        img = Image.fromarray(base.astype(np.uint16) * 257)  # 16-bit: full-range copy of `base`
    elif mode == "P":
        img = Image.fromarray(np.stack([base] * 3, axis=2)).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        raise ValueError(mode)
    fmt = {".bmp": "BMP", ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}
    img.save(path, format=fmt[path.suffix.lower()])
    return path


def write_mask(path: Path, h: int = 20, w: int = 24, nucleus: tuple[int, int, int, int] = (5, 5, 10, 10)) -> Path:
    """A mask in the archive colours: background, a cytoplasm rectangle, a nucleus box (y0, x0, y1, x1)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:] = BACKGROUND_RGB
    rgb[2:h - 2, 2:w - 2] = CYTOPLASM_RGB
    y0, x0, y1, x1 = nucleus
    rgb[y0:y1, x0:x1] = NUCLEUS_RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="BMP" if path.suffix.lower() == ".bmp" else "PNG")
    return path


def herlev_folder(root: Path, per_class: int = 4, folders: dict[str, int] | None = None, ext: str = ".BMP") -> Path:
    """A tiny Herlev-layout folder: `folders` maps folder name -> image count (masks beside each)."""
    folders = folders or {f: per_class for f in ("normal_superficiel", "normal_intermediate", "normal_columnar",
                                                  "light_dysplastic", "moderate_dysplastic", "severe_dysplastic",
                                                  "carcinoma_in_situ")}
    for folder, n in folders.items():
        for i in range(n):
            write_image(root / folder / f"{folder[:3]}{i}{ext}", value=10 * i)
            write_mask(root / folder / f"{folder[:3]}{i}-d.bmp")
    return root

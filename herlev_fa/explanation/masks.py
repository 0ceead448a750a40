"""Reading Herlev segmentation masks (`<stem>-d.bmp` / `<stem>-d.png`) into region codes.

What this is: the one public reader of mask files. A mask is an RGB picture in the archive
colour code (``labels.NUCLEUS_RGB``, ``CYTOPLASM_RGB``, ``BACKGROUND_RGB``, ``BORDER_RGB``);
it becomes an [H, W] uint8 array of the region codes below, from which area shares and the
nucleus fraction N / (N + C) follow.

How the awkward pixels are handled: the grey band that the archive draws along the cell border
is kept as its own region, BORDER, and any other colour (such as the stray black pixels of some
archive masks) becomes OTHER. Neither counts as nucleus or cytoplasm, so the nucleus fraction
rests on the pixels the annotator labelled as such. A file with more than a small share of
OTHER pixels is refused, since it is most likely not a mask or was saved lossily (JPEG).

What it is not: attribution or overlap maths (``explain.attribution``, ``explain.overlap``),
and no resizing: a mask is read at its own size.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from herlev_fa.errors import HerlevError, missing
from herlev_fa.labels import BACKGROUND_RGB, BORDER_RGB, CYTOPLASM_RGB, NUCLEUS_RGB

BACKGROUND = 0
CYTOPLASM = 1
NUCLEUS = 2
BORDER = 3  # the grey band along the cell border
OTHER = 4  # any colour that is not a mask code
REGION_NAMES: tuple[str, ...] = ("background", "cytoplasm", "nucleus", "border", "other")

_CODES = ((BACKGROUND_RGB, BACKGROUND), (CYTOPLASM_RGB, CYTOPLASM), (NUCLEUS_RGB, NUCLEUS), (BORDER_RGB, BORDER))


def _packed(rgb: np.ndarray) -> np.ndarray:
    """[..., 3] uint8 -> [...] uint32, one number per colour."""
    rgb = rgb.astype(np.uint32)
    return (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]


def decode_mask(rgb: np.ndarray) -> np.ndarray:
    """Exact colour match of a mask picture to region codes.

    Args:
        rgb: [H, W, 3] uint8 RGB mask.

    Returns:
        [H, W] uint8 region codes (BACKGROUND, CYTOPLASM, NUCLEUS, BORDER, OTHER).
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an [H, W, 3] RGB array, got shape {rgb.shape}")
    packed = _packed(rgb)  # [H, W]
    regions = np.full(packed.shape, OTHER, np.uint8)
    for colour, code in _CODES:
        regions[packed == _packed(np.array(colour, np.uint8))] = code
    return regions


def read_mask(path: str | Path, max_other: float = 0.05) -> np.ndarray:
    """Read a mask file (palette or RGB, BMP or PNG) into [H, W] uint8 region codes.

    Raises:
        HerlevError: the file is missing, unreadable or truncated, or more than `max_other` of
            its pixels have a colour that is not a mask code.
    """
    path = Path(path)
    if not path.is_file():
        raise HerlevError(missing(path, "mask"))
    try:
        with Image.open(path) as image:
            rgb = np.asarray(image.convert("RGB"))  # [H, W, 3]
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:  # not an image, truncated, bomb
        raise HerlevError(f"mask '{path}' could not be read ({e}); replace it with an intact BMP or PNG") from e
    regions = decode_mask(rgb)
    other = regions == OTHER
    if other.mean() > max_other:
        colours, counts = np.unique(rgb[other], axis=0, return_counts=True)
        top = np.argsort(counts)[::-1][:3]
        most = ", ".join(f"{tuple(int(v) for v in colours[i])} {counts[i] / other.size:.1%}" for i in top)
        raise HerlevError(
            f"mask '{path}' has {other.mean():.1%} pixels in colours that are not mask codes (most: {most}); "
            "a mask must be a lossless BMP/PNG in the archive colours"
        )
    return regions

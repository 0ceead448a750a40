"""Synthetic single cells written in the exact layout of the Herlev archive.

What this is: a generator of `out/<archive folder>/<name>.BMP` images with their
`<name>-d.bmp` masks in the archive colour code (``labels.NUCLEUS_RGB`` and friends, plus a
1-2 px grey band just outside the cell border, as the archive masks have), for tests, demos
and smoke runs of the whole pipeline without the real data.

Severity is drawn the way cytologists read it, in the nucleus. From the normals (severity 0)
to carcinoma in situ (4) the nucleus grows (nucleus/cell area about 0.03-0.08 up to about
0.5-0.7), darkens (mid purple-blue to near black-purple) and becomes more irregular (radial
harmonics of the outline and chromatin texture both grow), while the cytoplasm shrinks. The
normals keep their look: superficial = large flat pink/orange polygonal cell with a tiny dark
pyknotic nucleus; intermediate = large blue-green cell with a small round pale nucleus;
columnar = elongated cell with its nucleus near one end. Cell size, shape, rotation,
position, colours, noise and blur vary, so adjacent classes overlap.

What it is not: a model of real smears (no overlapping cells, debris or staining artefacts).
A score learnt here says the pipeline runs and learns, not how well it does on real cells.
"""

from __future__ import annotations

import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from herlev_fa.atomic import check_output_folder, out_of_space
from herlev_fa.errors import HerlevError, SettingError
from herlev_fa.labels import (
    ARCHIVE_FOLDERS,
    BACKGROUND_RGB,
    BORDER_RGB,
    CYTOPLASM_RGB,
    HERLEV7,
    NUCLEUS_RGB,
)

GENERATOR_VERSION = 1  # bump when the drawing changes, so old synthetic folders can be told apart

_NUCLEUS_LIGHT = np.array((120, 100, 185), np.float32)  # mid purple-blue stain
_NUCLEUS_DARK = np.array((40, 22, 62), np.float32)  # near black-purple stain


@dataclass(frozen=True)
class _Look:
    """How one class is drawn; severity itself adds nucleus irregularity and chromatin texture."""

    nc_ratio: float  # typical nucleus / cell area
    cell_scale: tuple[float, float]  # cell long semi-axis over the largest that fits the image
    aspect: tuple[float, float]  # cell short / long semi-axis
    cyto_rgb: tuple[int, int, int]  # typical cytoplasm colour
    darkness: float  # nucleus stain: 0 = mid purple-blue .. 1 = near black-purple
    polygon_sides: int = 0  # > 0: flat polygonal cytoplasm (superficial)
    nucleus_at_end: bool = False  # nucleus near one end of the long axis (columnar)


_LOOKS: dict[str, _Look] = {
    "normal_superficial": _Look(0.035, (0.80, 0.97), (0.75, 1.00), (238, 170, 150), 0.55, polygon_sides=6),
    "normal_intermediate": _Look(0.05, (0.78, 0.97), (0.70, 1.00), (150, 200, 190), 0.00),
    "normal_columnar": _Look(0.08, (0.80, 0.97), (0.30, 0.45), (165, 185, 205), 0.10, nucleus_at_end=True),
    "light_dysplastic": _Look(0.20, (0.65, 0.87), (0.65, 1.00), (140, 190, 195), 0.32),
    "moderate_dysplastic": _Look(0.32, (0.60, 0.82), (0.65, 1.00), (135, 180, 200), 0.50),
    "severe_dysplastic": _Look(0.45, (0.55, 0.77), (0.60, 1.00), (130, 170, 200), 0.75),
    "carcinoma_in_situ": _Look(0.60, (0.50, 0.72), (0.60, 1.00), (125, 160, 195), 1.00),
}
_SEVERITY: dict[str, int] = dict(HERLEV7)


def _outline(rng: np.random.Generator, amplitude: float, sides: int = 0) -> Callable[[np.ndarray], np.ndarray]:
    """A closed outline as radius(angle), about 1: harmonics 2..5 of total `amplitude`,
    times a polygon with `sides` vertices on the unit circle when `sides` > 0."""
    ks = np.arange(2, 6)
    amps = amplitude * rng.dirichlet(np.ones(len(ks)))
    phases = rng.uniform(0, 2 * np.pi, len(ks))
    turn = rng.uniform(0, 2 * np.pi)

    def radius(phi: np.ndarray) -> np.ndarray:
        r = 1 + sum(a * np.cos(k * phi + p) for k, a, p in zip(ks, amps, phases))
        if sides:
            sector = 2 * np.pi / sides
            r = r * np.cos(np.pi / sides) / np.cos((phi + turn) % sector - sector / 2)
        return r

    return radius


def _level(
    xx: np.ndarray, yy: np.ndarray, centre: tuple[float, float], axes: tuple[float, float], theta: float,
    radius: Callable[[np.ndarray], np.ndarray],
) -> np.ndarray:
    """[H, W] -> [H, W]: distance from `centre` relative to the outline (<= 1 inside).

    The outline `radius(angle)` is stretched to semi-axes `axes` (long, short) and turned by `theta`.
    """
    dx, dy = xx - centre[0], yy - centre[1]
    u = (dx * np.cos(theta) + dy * np.sin(theta)) / axes[0]
    v = (-dx * np.sin(theta) + dy * np.cos(theta)) / axes[1]
    return np.hypot(u, v) / radius(np.arctan2(v, u))


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    """[H, W] float32 noise with unit standard deviation and blobs about `sigma` px across."""
    noise = ndimage.gaussian_filter(rng.standard_normal(shape).astype(np.float32), sigma)
    return noise / (noise.std() + 1e-6)


def make_cell(folder_class: str, rng: np.random.Generator, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic cell of class `folder_class` (a canonical name of ``labels.HERLEV7``).

    Returns:
        (image, mask), both uint8 [H, W, 3] RGB with W == size and H in about [0.8, 1.0] * size;
        the mask holds only the archive colours (nucleus, cytoplasm, background, grey band).

    Raises:
        HerlevError: `folder_class` is not one of the seven Herlev classes.
    """
    if folder_class not in _LOOKS:
        raise HerlevError(f"unknown Herlev class '{folder_class}': choose one of {', '.join(_LOOKS)}")
    look, severity = _LOOKS[folder_class], _SEVERITY[folder_class]
    h, w = round(size * rng.uniform(0.8, 1.0)), size
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)  # [H, W] each

    # Cell: sized so that its outline plus the grey band and a margin stay inside the image.
    cell_radius = _outline(rng, rng.uniform(0.02, 0.08), look.polygon_sides)
    r_max = float(cell_radius(np.linspace(0, 2 * np.pi, 720)).max())
    theta = rng.uniform(0, np.pi)
    a = rng.uniform(*look.cell_scale) * (min(h, w) / 2 - 3.5) / r_max
    b = a * rng.uniform(*look.aspect)
    half_x = r_max * np.hypot(a * np.cos(theta), b * np.sin(theta))
    half_y = r_max * np.hypot(a * np.sin(theta), b * np.cos(theta))
    cx = (w - 1) / 2 + rng.uniform(-1, 1) * max(0.0, w / 2 - 3.5 - half_x)
    cy = (h - 1) / 2 + rng.uniform(-1, 1) * max(0.0, h / 2 - 3.5 - half_y)
    cell_level = _level(xx, yy, (cx, cy), (a, b), theta, cell_radius)
    cell = cell_level <= 1

    # Nucleus: area share drawn around the class's typical one, placed inside the cell and
    # cut to leave a rim of at least ~2 px of cytoplasm.
    share = min(look.nc_ratio * np.exp(rng.normal(0, 0.25)), 0.8)
    equal_area_r = np.sqrt(share * a * b)
    n_aspect = rng.uniform(0.75 - 0.05 * severity, 1.0)
    if look.nucleus_at_end:
        u0, v0, n_theta = rng.choice((-1, 1)) * rng.uniform(0.35, 0.55), rng.uniform(-0.1, 0.1), theta
    else:
        reach = 0.5 * (1 - np.sqrt(share)) * rng.uniform(0, 1)
        angle = rng.uniform(0, 2 * np.pi)
        u0, v0, n_theta = reach * np.cos(angle), reach * np.sin(angle), rng.uniform(0, np.pi)
    nx = cx + a * u0 * np.cos(theta) - b * v0 * np.sin(theta)
    ny = cy + a * u0 * np.sin(theta) + b * v0 * np.cos(theta)
    n_axes = (equal_area_r / np.sqrt(n_aspect), equal_area_r * np.sqrt(n_aspect))
    n_radius = _outline(rng, 0.02 + 0.035 * severity)
    nucleus = (_level(xx, yy, (nx, ny), n_axes, n_theta, n_radius) <= 1) & (cell_level <= 1 - 2 / b)

    # Image: background, cytoplasm with a faint texture, nucleus with chromatin texture, then blur and noise.
    background = np.array((218, 222, 228), np.float32) + rng.normal(0, 6, 3) + (0, 0, rng.uniform(0, 14))
    cytoplasm = np.array(look.cyto_rgb, np.float32) + rng.normal(0, 12, 3)
    darkness = np.clip(look.darkness + rng.normal(0, 0.12), 0, 1)
    stain = _NUCLEUS_LIGHT + darkness * (_NUCLEUS_DARK - _NUCLEUS_LIGHT) + rng.normal(0, 6, 3)
    image = np.broadcast_to(background, (h, w, 3)).copy()  # [H, W, 3] float32
    image[cell] = cytoplasm * (1 + 0.06 * _smooth_noise(rng, (h, w), 4.0)[cell, None])
    chromatin = (0.04 + 0.05 * severity) * _smooth_noise(rng, (h, w), 0.8)
    image[nucleus] = stain * (1 + chromatin[nucleus, None])
    blur = rng.uniform(0.4, 1.0)
    image = ndimage.gaussian_filter(image, (blur, blur, 0)) + rng.normal(0, rng.uniform(2, 5), image.shape)

    band = ndimage.binary_dilation(cell, iterations=int(rng.integers(1, 3))) & ~cell
    mask = np.empty((h, w, 3), np.uint8)
    mask[:] = BACKGROUND_RGB
    mask[band] = BORDER_RGB
    mask[cell] = CYTOPLASM_RGB
    mask[nucleus] = NUCLEUS_RGB
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), mask


def _bmp_bytes(rgb: np.ndarray) -> bytes:
    """[H, W, 3] uint8 -> the bytes of a 24-bit RGB BMP."""
    buffer = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(buffer, format="BMP")
    return buffer.getvalue()


def _write_atomic(path: Path, data: bytes) -> None:
    """Write `data` to `path` through a temporary file in the same folder, so `path` is never half-written."""
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as e:  # a full disk: one line naming the file, as every other write
        full = out_of_space(path, e, tmp, size=len(data))
        if full is None:
            raise
        raise full from None
    finally:
        tmp.unlink(missing_ok=True)


def write_synthetic(out: str | Path, per_class: int = 30, size: int = 96, seed: int = 0) -> Path:
    """Write a synthetic Herlev-layout dataset: `per_class` cells in each of the 7 archive folders.

    Each cell is `out/<archive folder>/synth-<class index>-<i:04d>.BMP` with its mask
    `...-d.bmp` (24-bit RGB BMP). The same seed gives the same bytes. `out/README.txt`, written
    last, says what the folder is.

    Raises:
        HerlevError: `out` exists and is not an empty folder, or an argument is out of range.
    """
    out = Path(out)
    if not isinstance(per_class, int) or per_class < 2:
        raise SettingError("{per_class} {value} is out of range: use an integer >= 2", per_class)
    if not isinstance(size, int) or not 16 <= size <= 1024:
        raise SettingError("{size} {value} is out of range: use an integer from 16 to 1024 pixels", size)
    if not isinstance(seed, int) or not 0 <= seed < 2**32:
        raise SettingError(f"{{seed}} {{value}} is out of range: use 0..{2**32 - 1}", seed)
    check_output_folder(out, "OUT")
    if out.exists() and any(out.iterdir()):
        raise HerlevError(f"output folder '{out}' already exists and is not empty: choose a new folder")
    for class_index, (name, _) in enumerate(HERLEV7):
        folder = out / ARCHIVE_FOLDERS[name]
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            image, mask = make_cell(name, np.random.default_rng([seed, class_index, i]), size)
            stem = f"synth-{class_index}-{i:04d}"
            _write_atomic(folder / f"{stem}.BMP", _bmp_bytes(image))
            _write_atomic(folder / f"{stem}-d.bmp", _bmp_bytes(mask))
    readme = (
        "Synthetic cells in the Herlev archive layout, made by herlev_fa.data.synth; not real cells.\n"
        f"generator version: {GENERATOR_VERSION}\nseed: {seed}\nper_class: {per_class}\nsize: {size}\n"
        "Each <folder>/<name>.BMP has its mask <name>-d.bmp: nucleus (0,0,255), cytoplasm (0,0,128),\n"
        "background (255,0,0), grey band (128,128,128) along the cell border.\n"
    )
    _write_atomic(out / "README.txt", readme.encode())
    return out

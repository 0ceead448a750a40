"""The synthetic Herlev generator: archive layout, determinism, mask colours, and severity drawn in the nucleus."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from herlev_fa.data.synth import make_cell, write_synthetic
from herlev_fa.errors import HerlevError
from herlev_fa.explanation.masks import BACKGROUND, CYTOPLASM, NUCLEUS, OTHER, decode_mask
from herlev_fa.labels import ARCHIVE_FOLDERS, HERLEV7
from helpers import nucleus_share

PER_CLASS, SIZE = 30, 96


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_synthetic(tmp_path_factory.mktemp("synth") / "herlev", per_class=PER_CLASS, size=SIZE, seed=0)


@pytest.fixture(scope="module")
def cells(synth_root: Path) -> list[dict]:
    """One row per cell: class, severity, image [H, W, 3], regions [H, W], nucleus fraction, nucleus brightness."""
    rows = []
    for name, severity in HERLEV7:
        for image_path in sorted((synth_root / ARCHIVE_FOLDERS[name]).glob("*.BMP")):
            image = np.asarray(Image.open(image_path))
            regions = decode_mask(np.asarray(Image.open(image_path.with_name(f"{image_path.stem}-d.bmp"))))
            luma = image.astype(float) @ np.array([0.299, 0.587, 0.114])  # [H, W]
            rows.append(
                dict(cls=name, severity=severity, image=image, regions=regions,
                     nf=nucleus_share(regions), brightness=float(luma[regions == NUCLEUS].mean()))
            )
    return rows


def _by(cells: list[dict], key: str, field: str) -> dict:
    groups: dict = {}
    for c in cells:
        groups.setdefault(c[key], []).append(c[field])
    return {k: np.array(v) for k, v in groups.items()}


def test_layout_is_the_archive_one(synth_root: Path) -> None:
    folders = sorted(p.name for p in synth_root.iterdir() if p.is_dir())
    assert folders == sorted(ARCHIVE_FOLDERS.values())
    assert "normal_superficiel" in folders
    for index, (name, _) in enumerate(HERLEV7):
        files = sorted(p.name for p in (synth_root / ARCHIVE_FOLDERS[name]).iterdir())
        assert len(files) == 2 * PER_CLASS
        assert f"synth-{index}-0000.BMP" in files and f"synth-{index}-0000-d.bmp" in files
        assert sum(f.endswith("-d.bmp") for f in files) == PER_CLASS
    readme = (synth_root / "README.txt").read_text()
    assert "synthetic" in readme.lower() and "seed: 0" in readme and f"per_class: {PER_CLASS}" in readme
    assert not list(synth_root.rglob(".*"))  # no temporary files left behind


def test_images_are_rgb_bmp_of_the_right_size(synth_root: Path, cells: list[dict]) -> None:
    with Image.open(next(synth_root.glob("normal_columnar/*-d.bmp"))) as mask:
        assert (mask.format, mask.mode) == ("BMP", "RGB")
    heights = [c["image"].shape[0] for c in cells]
    assert all(c["image"].shape == (*c["regions"].shape, 3) for c in cells)
    assert all(c["image"].shape[1] == SIZE for c in cells)
    # Not square, so letterboxing is exercised.
    assert 0.8 * SIZE - 1 <= min(heights) < 0.85 * SIZE and max(heights) == SIZE


def test_masks_hold_only_archive_colours_with_cell_inside(cells: list[dict]) -> None:
    for c in cells:
        regions = c["regions"]
        assert not (regions == OTHER).any()
        counts = np.bincount(regions.ravel(), minlength=5)
        assert counts[1:4].min() > 0  # cytoplasm, nucleus and grey band all present
        edge = np.concatenate([regions[0], regions[-1], regions[:, 0], regions[:, -1]])
        assert (edge == BACKGROUND).all()  # the cell and its band stay inside the image
        # Nucleus inside cytoplasm: no nucleus pixel has a 4-neighbour outside the cell.
        nucleus = regions == NUCLEUS
        cell = (regions == NUCLEUS) | (regions == CYTOPLASM)
        for shifted in (np.roll(cell, 1, 0), np.roll(cell, -1, 0), np.roll(cell, 1, 1), np.roll(cell, -1, 1)):
            assert shifted[nucleus].all()


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a = files(write_synthetic(tmp_path / "a", per_class=2, size=32, seed=7))
    b = files(write_synthetic(tmp_path / "b", per_class=2, size=32, seed=7))
    c = files(write_synthetic(tmp_path / "c", per_class=2, size=32, seed=8))
    assert len(a) == 7 * 2 * 2 + 1 and a == b
    assert a.keys() == c.keys()
    assert sum(a[k] != c[k] for k in a if k.endswith(".BMP")) == 14  # every image changes with the seed


def test_nucleus_grows_with_severity(cells: list[dict]) -> None:
    means = {s: v.mean() for s, v in sorted(_by(cells, "severity", "nf").items())}
    assert list(means) == [0, 1, 2, 3, 4]
    assert all(means[s] < means[s + 1] for s in range(4))
    assert means[4] > 3 * means[0]
    assert 0.03 <= means[0] <= 0.08 and 0.5 <= means[4] <= 0.7
    per_class = {k: v.mean() for k, v in _by(cells, "cls", "nf").items()}
    assert max(per_class[n] for n, s in HERLEV7 if s == 0) < 0.1  # every normal class has a small nucleus


def test_nucleus_darkens_with_severity(cells: list[dict]) -> None:
    means = [v.mean() for _, v in sorted(_by(cells, "severity", "brightness").items())]
    assert all(a > b for a, b in zip(means, means[1:]))
    assert means[0] - means[4] > 40


def test_adjacent_dysplasias_overlap_yet_are_learnable(cells: list[dict]) -> None:
    nf = _by(cells, "severity", "nf")
    for s in (1, 2, 3):
        assert nf[s].max() > nf[s + 1].min()  # nucleus size alone cannot separate them
    # Best thresholds between adjacent class means, on nucleus fraction alone: far above
    # chance (25%) but not perfect.
    abnormal = [c for c in cells if c["severity"] > 0]
    cuts = [(nf[s].mean() + nf[s + 1].mean()) / 2 for s in (1, 2, 3)]
    predicted = np.array([1 + np.searchsorted(cuts, c["nf"]) for c in abnormal])
    accuracy = (predicted == np.array([c["severity"] for c in abnormal])).mean()
    assert 0.45 < accuracy < 0.95


def test_make_cell_height_range_and_unknown_class() -> None:
    rng = np.random.default_rng(3)
    heights = {make_cell("carcinoma_in_situ", rng, size=200)[0].shape[0] for _ in range(40)}
    assert min(heights) >= 160 and max(heights) <= 200 and len(heights) > 10
    with pytest.raises(HerlevError, match="unknown Herlev class 'koilocyte'"):
        make_cell("koilocyte", rng)


def test_refuses_non_empty_output_and_bad_arguments(tmp_path: Path) -> None:
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x.txt").write_text("x")
    with pytest.raises(HerlevError, match="already exists and is not empty"):
        write_synthetic(tmp_path / "full", per_class=2, size=32)
    (tmp_path / "empty").mkdir()
    assert len(list(write_synthetic(tmp_path / "empty", per_class=2, size=16).rglob("*.BMP"))) == 14  # empty is fine
    with pytest.raises(HerlevError, match=r"^per_class 1 is out of range: use an integer >= 2"):
        write_synthetic(tmp_path / "a", per_class=1)
    for size in (15, 1025):
        with pytest.raises(HerlevError, match=rf"^size {size} is out of range: .*16 to 1024"):
            write_synthetic(tmp_path / "b", size=size)
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # nothing written on refusal

"""From a folder to labelled items: find the class folders, pair images with masks, assign folds.

What lives here: the Herlev layout reader (`scan`), its mask pairing rule, and the seeded
stratified k-fold split. What does not: decoding pixels (``herlev_fa.data.images``) or
building DataLoaders (``herlev_fa.data.feed``, ``herlev_fa.data.datablock``).

The item table is a pandas DataFrame, one row per image, with columns
``path`` (absolute), ``rel`` (relative to the dataset root, as saved in a run's folds file),
``mask`` (absolute path or ""), ``folder`` (as on disk), ``label`` (task class),
``y`` (class index in severity order) and ``severity``.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from herlev_fa.errors import HerlevError, missing
from herlev_fa.labels import IMAGE_EXTENSIONS, MASK_SUFFIXES, Task

COLUMNS = ["path", "rel", "mask", "folder", "label", "y", "severity"]
# file names that are not valid UTF-8 (Linux allows any bytes) are written to CSV files as their own bytes
FILE_NAME_ERRORS = "surrogateescape"


def printable(name: str) -> str:
    """A file name fit for text and figures: bytes that are not UTF-8 (Linux allows them) become U+FFFD.

    The name itself is kept everywhere else (CSV files write its bytes back, see `FILE_NAME_ERRORS`).
    """
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def is_mask_file(path: Path) -> bool:
    """`<stem>-d.bmp` / `<stem>-d.png`: a segmentation mask, never an image."""
    return path.name.lower().endswith(MASK_SUFFIXES)


def is_image_file(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS and not is_mask_file(path)


def mask_for(image: Path, siblings: dict[str, Path] | None = None) -> Path | None:
    """The mask beside an image (`X.BMP` -> `X-d.bmp` or `X-d.png`, any case), or None.

    `siblings` (lower-cased file name -> path of the image's folder) saves a listing per call.
    """
    if siblings is None:
        siblings = {p.name.lower(): p for p in image.parent.iterdir()}
    for suffix in MASK_SUFFIXES:
        found = siblings.get((image.stem + suffix).lower())
        if found is not None and found.is_file():
            return found
    return None


def _subdirs(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    except OSError as e:
        raise HerlevError(f"cannot read folder '{folder}': {e.strerror or e}") from e


def _listing(folder: Path) -> dict[str, Path]:
    """Lower-cased file name -> path, for the files of one folder."""
    return {p.name.lower(): p for p in sorted(folder.iterdir()) if p.is_file()}


def find_class_root(root: Path, task: Task, max_depth: int = 2,
                    hint: str = "for another dataset pass --classes FILE") -> Path:
    """The folder whose subfolders are the classes: `root` itself or up to `max_depth` levels down.

    Raises:
        HerlevError: `root` is missing, or no known class folder is found.
    """
    if not root.exists():
        raise HerlevError(missing(root, "data folder"))
    if not root.is_dir():
        raise HerlevError(f"data path '{root}' is not a folder")
    level = [root]
    for _ in range(max_depth + 1):
        for candidate in level:
            if any(task.class_of_folder(d.name) for d in _subdirs(candidate)):
                return candidate
        level = [d for parent in level for d in _subdirs(parent)]
    known = ", ".join(sorted(task.folder_to_class))
    raise HerlevError(
        f"no class folder found in '{root}' (looked {max_depth} levels down for: {known}); {hint}"
    )


# What to do about a folder that is no class of the task, when the task is a built-in one and the
# caller can take another (`train --classes`); a run's classes are fixed (`trained_on`).
MAP_IT = "pass --classes FILE to map it"


def trained_on(run_path: str | Path) -> str:
    """The remedy for a folder that is no class of a run: the run's classes are fixed."""
    return f"the run '{run_path}' was trained on the classes listed; remove the folder, or pass --data with only those"


def data_folder(root: str | Path) -> Path:
    """The folder a dataset's relative paths start from: the folder itself, or a CSV file's folder."""
    root = Path(root)
    return root.parent if root.suffix.lower() == ".csv" and root.is_file() else root


def scan_csv(path: Path, task: Task) -> pd.DataFrame:
    """Read a CSV of images and labels into the item table: columns `path` (relative to the CSV's folder, or
    absolute) and `label` (a class of the task, or a folder name it knows, e.g. `normal_superficiel`).

    Raises:
        HerlevError: unreadable CSV, a missing column, an unknown label or a missing image (the row is named).
    """
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding_errors=FILE_NAME_ERRORS)
    except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise HerlevError(f"'{path}' is not a CSV of images ({str(e).splitlines()[0]})") from None
    missing = [c for c in ("path", "label") if c not in frame.columns]
    if missing:
        raise HerlevError(f"'{path}' has no column {', '.join(missing)}: it needs 'path' and 'label' (found: "
                          f"{', '.join(frame.columns) or 'none'})")
    if frame.empty:
        raise HerlevError(f"'{path}' lists no image")
    folder = path.parent
    rows = []
    for line, (given, label_text) in enumerate(zip(frame["path"], frame["label"]), start=2):  # line 1: the header
        label = label_text if label_text in task.classes else task.class_of_folder(label_text)
        if label is None:
            raise HerlevError(f"'{path}' line {line}: label '{label_text}' is not a class of task '{task.name}' "
                              f"(classes: {', '.join(task.classes)}); pass --classes FILE to map it")
        image = Path(os.path.normpath(folder / given))  # links kept as named: rel stays under the CSV's folder
        if not image.is_file():
            raise HerlevError(f"'{path}' line {line}: image '{image}' does not exist")
        rel = image.relative_to(folder).as_posix() if image.is_relative_to(folder) else str(image)
        y = task.classes.index(label)
        mask = mask_for(image)
        rows.append((str(image), rel, str(mask) if mask else "", image.parent.name, label, y, task.severities[y]))
    return pd.DataFrame(rows, columns=COLUMNS)


def scan(root: str | Path, task: Task, remedy: str = MAP_IT) -> pd.DataFrame:
    """Read a folder-per-class dataset, or a CSV of images and labels (`scan_csv`), into the item table.

    `remedy`: what the error for a folder that is no class of the task tells the user to do (for a
    class map: add the folder to it).

    Raises:
        HerlevError: missing folder, no class folder, an unknown class folder, or no image at all.
    """
    hint = "for another dataset pass --classes FILE"
    if remedy != MAP_IT:  # a run's classes: fixed
        hint = "pass --data with the class folders the run was trained on"
    elif task.name.startswith("classmap:"):  # --classes was passed: no use saying to pass it
        hint = f"check the folder names in the class map {task.name.removeprefix('classmap:')}"
        remedy = f"add it to the class map {task.name.removeprefix('classmap:')}"
    root = Path(root).expanduser().resolve()
    if root.suffix.lower() == ".csv" and root.is_file():
        return scan_csv(root, task)
    class_root = find_class_root(root, task, hint=hint)
    rows = []
    by_name: dict[str, Path] = {}  # lower-cased folder name -> the first folder of that name holding images
    for folder in _subdirs(class_root):
        siblings = _listing(folder)
        images = sorted(p for p in siblings.values() if is_image_file(p))
        label = task.class_of_folder(folder.name)
        key = folder.name.strip().lower()
        if images and label is not None and key in by_name:  # names match case-insensitively: said, not merged silently
            warnings.warn(f"folders '{by_name[key]}' and '{folder}' differ only by case: the images of both are read "
                          f"as class '{label}'", stacklevel=2)
        elif images:
            by_name[key] = folder
        if label is None:
            if not images:
                continue  # an unrelated empty or image-less folder, e.g. a results folder
            known = ", ".join(sorted(task.folder_to_class))
            raise HerlevError(f"folder '{folder}' is not a known class of task '{task.name}' "
                              f"(known: {known}); {remedy}")
        if not images:
            warnings.warn(f"class folder '{folder}' holds no image", stacklevel=2)
        y = task.classes.index(label)
        for image in images:
            mask = mask_for(image, siblings)
            rows.append((str(image), image.relative_to(root).as_posix(), str(mask) if mask else "",
                         folder.name, label, y, task.severities[y]))
    if not rows:
        raise HerlevError(f"no image found under '{class_root}' (extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return pd.DataFrame(rows, columns=COLUMNS)


def assign_folds(items: pd.DataFrame, n_folds: int, seed: int) -> np.ndarray:
    """Seeded stratified k-fold: fold index per item, shape [N].

    Stratified by class, so every fold holds each class in proportion.

    Raises:
        HerlevError: a class has fewer images than folds.
    """
    counts = items["label"].value_counts()
    too_few = counts[counts < n_folds]
    if len(too_few):
        name, n = too_few.index[0], int(too_few.iloc[0])
        raise HerlevError(f"class '{name}' has only {n} image(s), fewer than the {n_folds} folds; "
                          f"use --folds {max(2, n)} or add images")
    from sklearn.model_selection import StratifiedKFold  # training only: listing and predicting images do without it

    folds = np.empty(len(items), dtype=np.int64)
    splitter = StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    for k, (_, valid) in enumerate(splitter.split(np.zeros(len(items)), items["y"].to_numpy())):
        folds[valid] = k
    return folds


def inner_split(items: pd.DataFrame, fold: int, share: float, seed: int) -> np.ndarray:
    """Rows of the training folds held aside to choose the epoch: bool [N], False on the held-out `fold`.

    From each class outside `fold`, a seeded random `share` of its images (rounded, at least one of
    a class that has two or more): the held-out fold is never looked at before the final
    evaluation. The draw depends on the seed and the fold only, so a resumed run draws it again.
    """
    rng = np.random.default_rng([seed, fold])
    y, train = items["y"].to_numpy(), items["fold"].to_numpy() != fold
    mask = np.zeros(len(items), bool)
    for c in np.unique(y[train]):
        rows = np.flatnonzero(train & (y == c))
        if len(rows) >= 2:
            mask[rng.choice(rows, size=max(1, round(share * len(rows))), replace=False)] = True
    return mask

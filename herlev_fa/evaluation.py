"""Evaluate a run: predictions on its held-out fold (or another folder), metrics, figures.

`write_evaluation` is shared with training, which evaluates the best epoch the same way.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from herlev_fa.atomic import write_json
from herlev_fa.config import check_batch_size, resolve_device
from herlev_fa.data.items import mask_for, scan
from herlev_fa.errors import HerlevError
from herlev_fa.labels import Task
from herlev_fa.metrics import decode, severity_metrics, undefined_metrics
from herlev_fa.figures import confusion_matrix_png, score_distribution_png
from herlev_fa.runs import Run, load_run


def write_evaluation(out_dir: Path, out: np.ndarray, y: np.ndarray, task: Task, head: str,
                     extra: dict | None = None) -> dict:
    """Metrics of raw outputs [N, C] against classes [N]: `metrics.json` + the two figures."""
    metrics = severity_metrics(out, y, head, task.severities)
    metrics = {**(extra or {}), **metrics, "classes": list(task.classes)}
    undefined = undefined_metrics(metrics)
    if undefined:
        present = ", ".join(task.classes[c] for c in np.unique(y))
        warnings.warn(f"{', '.join(undefined)} cannot be computed on {len(y)} image(s) of {present} only (kappa needs "
                      "two classes, auc normal and abnormal cells); written as null in "
                      f"{out_dir / 'metrics.json'}", stacklevel=2)
    write_json(out_dir / "metrics.json", metrics)
    confusion_matrix_png(np.array(metrics["confusion_matrix"]), task.classes, out_dir / "confusion_matrix.png",
                         title=f"{head}: accuracy {metrics['accuracy']:.3f}, n={metrics['n']}")
    _, score, _ = decode(out, head, task.severities)
    score_distribution_png(score, y, task.classes, task.severities, out_dir / "score_distribution.png")
    return metrics


def held_out_items(run: Run, data: str | Path | None = None) -> pd.DataFrame:
    """Items of the run's held-out fold, read from its folds file under `data` (default: the run's data root).

    Raises:
        HerlevError: the data root is gone, or held-out images are missing from it.
    """
    root = Path(data) if data is not None else Path(run.meta["data_root"])
    folds = run.folds()
    held = folds[folds["fold"] == run.fold].reset_index(drop=True)
    paths = [root / rel for rel in held["rel"]]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise HerlevError(f"{len(missing)} held-out image(s) of run '{run.path}' are missing, e.g. '{missing[0]}'; "
                          "pass --data DIR pointing to where the data set it was trained on is now")
    unknown = set(held["label"]) - set(run.task.classes)
    if unknown:
        raise HerlevError(f"folds file of run '{run.path}' names classes {sorted(unknown)} not in its task")
    y = held["label"].map(run.task.classes.index)
    masks = [mask_for(p) for p in paths]
    return pd.DataFrame({"path": [str(p) for p in paths], "rel": held["rel"], "mask": [str(m) if m else "" for m in masks],
                         "folder": [p.parent.name for p in paths],
                         "label": held["label"], "y": y, "severity": [run.task.severities[i] for i in y]})


def predict_items(run: Run, items: pd.DataFrame, bs: int = 64, device: str = "cpu",
                  skip_bad: bool = False, progress: bool = True) -> tuple[np.ndarray, np.ndarray, pd.DataFrame]:
    """Raw model outputs [N, C] and classes [N] for labelled items, with the validation preprocessing.

    The same chunked inference as `predict` (memory does not grow with the number of images).
    Returns the items actually predicted (unreadable ones dropped with `skip_bad`).
    """
    from herlev_fa.prediction import predict_outputs

    out, kept = predict_outputs(run, list(items["path"]), bs=bs, device=device, skip_bad=skip_bad, progress=progress)
    items = items[items["path"].isin(set(kept))].reset_index(drop=True)  # kept keeps the input order
    return out, items["y"].to_numpy(np.int64), items


def evaluation_items(run: Run, data: str | Path | None = None, split: str | None = None) -> tuple[pd.DataFrame, str]:
    """The items to evaluate, and a description of them.

    `split="valid"`: the run's held-out fold, under `data` (the same data set, moved) or the
    recorded data root; `split="all"`: every image of `data` (default: the recorded data root). Without `split`: "valid" unless
    `data` is a folder other than the recorded data root (file names alone cannot tell a moved
    copy from another data set with the same names, so a moved copy needs `split="valid"`).

    Raises:
        HerlevError: unknown split, `all` without `data`, missing images.
    """
    if split not in (None, "valid", "all"):
        raise HerlevError(f"unknown --split '{split}': choose valid (the run's held-out fold) or all")
    if split is None:
        same_root = data is None or Path(data).expanduser().resolve() == Path(run.meta["data_root"])
        split = "valid" if same_root else "all"
    if split == "all":
        root = Path(data) if data is not None else Path(run.meta["data_root"])
        return scan(root, run.task), f"every image of {root}"
    return held_out_items(run, data), f"held-out fold {run.fold}"


def evaluate(run_dir: str | Path, data: str | Path | None = None, split: str | None = None,
             out: str | Path | None = None, bs: int = 64, device: str = "auto", skip_bad: bool = False,
             progress: bool = True) -> dict:
    """Evaluate a run on its held-out fold, or on every image of another folder.

    See `evaluation_items` for `data` and `split`. Writes `metrics.json`, `confusion_matrix.png`
    and `score_distribution.png` into `out` (default: the run folder for the held-out fold,
    `RUN/eval-<folder name>` for every image of another folder).

    Raises:
        HerlevError: bad run folder, missing data, unreadable images.
    """
    check_batch_size(bs)
    run = load_run(run_dir)
    device = resolve_device(device)
    items, source = evaluation_items(run, data, split)
    if out is not None:
        out_dir = Path(out)
    elif source.startswith("held-out"):
        out_dir = run.path
    else:
        out_dir = run.path / f"eval-{Path(data).resolve().name}"
    with torch.no_grad():
        outputs, y, items = predict_items(run, items, bs=bs, device=device, skip_bad=skip_bad, progress=progress)
    metrics = write_evaluation(out_dir, outputs, y, run.task, run.head, extra={"run": str(run.path), "data": source})
    metrics["out_dir"] = str(out_dir)
    return metrics

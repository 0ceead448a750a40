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
from herlev_fa.config import EvalSettings, resolve_device
from herlev_fa.data.items import mask_for, scan, trained_on
from herlev_fa.errors import HerlevError, SettingError
from herlev_fa.labels import Task
from herlev_fa.model.heads import Head
from herlev_fa.figures import confusion_matrix_png, reliability_png, roc_png, score_distribution_png
from herlev_fa.metrics import (N_BINS, THRESHOLD, abnormal_score, bootstrap_intervals, decode, learned_nothing,
                               severity_metrics, undefined_metrics)
from herlev_fa.runs import Run, load_run


def write_evaluation(out_dir: Path, out: np.ndarray, y: np.ndarray, task: Task, head: Head,
                     extra: dict | None = None, threshold: float = THRESHOLD) -> dict:
    """Metrics of raw outputs [N, C] against classes [N]: `metrics.json` + the figures.

    The figures: `confusion_matrix.png`, `score_distribution.png`, `roc.png` (normal vs
    abnormal, with the screening operating points) and, for heads with class probabilities,
    `reliability.png`. `threshold`: of the screening call (see `metrics.severity_metrics`).
    """
    metrics = severity_metrics(out, y, head, task.severities, threshold=threshold)
    metrics = {**(extra or {}), **metrics, "classes": list(task.classes)}
    undefined = undefined_metrics(metrics)
    if undefined:
        present = ", ".join(task.classes[c] for c in np.unique(y))
        warnings.warn(f"{', '.join(undefined)} cannot be computed on {len(y)} image(s) of {present} only (kappa needs "
                      "two classes, auc normal and abnormal cells); written as null in "
                      f"{out_dir / 'metrics.json'}", stacklevel=2)
    problem = learned_nothing(metrics, task.classes)
    if problem:
        warnings.warn(f"the model {problem} on these {metrics['n']} cells ({out_dir}); train longer, or check the "
                      "learning rate and the data", stacklevel=2)
    write_json(out_dir / "metrics.json", metrics)
    confusion_matrix_png(np.array(metrics["confusion_matrix"]), task.classes, out_dir / "confusion_matrix.png",
                         title=f"{head.name}: accuracy {metrics['accuracy']:.3f}, n={metrics['n']}")
    probs, score, _ = decode(out, head, task.severities)
    score_distribution_png(score, y, task.classes, task.severities, out_dir / "score_distribution.png")
    is_abnormal = np.asarray(task.abnormal())[y]  # [N]
    roc_png(is_abnormal, abnormal_score(probs, score, task.severities), metrics, out_dir / "roc.png",
            title=f"{head.name}: normal vs abnormal, n={metrics['n']}")
    if probs is not None:
        reliability_png(probs, y, metrics["ece"], out_dir / "reliability.png", n_bins=N_BINS,
                        title=f"{head.name}: reliability of the top class probability, n={metrics['n']}")
    return metrics


def held_out_items(run: Run, data: str | Path | None = None) -> pd.DataFrame:
    """Items of the run's held-out fold, read from its folds file under `data` (default: the run's data root).

    Raises:
        HerlevError: the data root is gone, or held-out images are missing from it.
    """
    from herlev_fa.data.items import data_folder

    if run.fold is None:
        raise HerlevError(f"'{run.path}' is an {run.describe()}: it has no held-out fold (every cell trained some "
                          "of them); use it on new cells (--data DIR --split all), or pass one fold run folder")
    root = data_folder(Path(data) if data is not None else Path(run.record.data_root))  # a CSV: its folder
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
    return pd.DataFrame({"path": [str(p) for p in paths], "rel": held["rel"],
                         "mask": [str(m) if m else "" for m in masks],
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
    recorded data root; `split="all"`: every image of `data` (default: the recorded data root).
    Without `split`: "valid" unless `data` is a folder other than the recorded data root (file
    names alone cannot tell a moved copy from another data set with the same names, so a moved
    copy needs `split="valid"`).

    Raises:
        HerlevError: unknown split, `all` without `data`, missing images.
    """
    if split not in (None, "valid", "all"):
        raise SettingError("unknown {split} {value}: choose valid (the run's held-out fold) or all", split)
    if split is None:
        same_root = data is None or Path(data).expanduser().resolve() == Path(run.record.data_root)
        split = "valid" if same_root else "all"
    if split == "all":
        root = Path(data) if data is not None else Path(run.record.data_root)
        return scan(root, run.task, trained_on(run.path)), f"every image of {root}"
    return held_out_items(run, data), f"held-out fold {run.fold}"


def evaluate(run: str | Path | Run, settings: EvalSettings | None = None) -> dict:
    """Evaluate a run on its held-out fold, or on every image of another folder (`EvalSettings`).

    See `evaluation_items` for `settings.data` and `settings.split`. Writes `metrics.json` and the
    figures of `write_evaluation` into `settings.out` (default: the run folder for the held-out
    fold, `RUN/eval-<folder name>` for every image of another folder). Every scalar metric gets a
    95% bootstrap interval over `settings.n_boot` resamples of the cells (`intervals`: metric ->
    [low, high]; none for 0); sensitivity, specificity and screening_accuracy score the screening
    call at `settings.threshold` (a number, None for 0.5, or an operating point the run recorded
    on its held-out fold: `spec95`, `sens95`, meaningful on new cells).

    The folder of a cross-validated run evaluates the ensemble of its fold models (on new
    cells only); `members` then holds each fold model's scalar metrics on the same cells.

    Raises:
        HerlevError: bad run folder, missing data, unreadable images, bad threshold.
    """
    settings = settings or EvalSettings()
    run = load_run(run)
    cut = run.screening_threshold(settings.threshold)
    device = resolve_device(settings.device)
    items, source = evaluation_items(run, settings.data, settings.split)
    if settings.out is not None:
        out_dir = settings.out
    elif source.startswith("held-out"):
        out_dir = run.path
    else:
        out_dir = run.path / f"eval-{settings.data.resolve().name}"
    members = run.members or (run,)
    with torch.no_grad():  # each member on its own (BatchNorm-folded) copy, averaged as FoldEnsemble does
        outs = [predict_items(member, items, bs=settings.bs, device=device, skip_bad=settings.skip_bad,
                              progress=settings.progress) for member in members]
    y = outs[0][1]
    stacked = torch.stack([torch.from_numpy(o) for o, _, _ in outs])  # [M, N, C]
    outputs = (stacked[0] if len(outs) == 1 else run.head.average_views(stacked, run.task.severities)).numpy()
    extra = {"run": str(run.path), "data": source, "model": run.describe(), "kept": run.kept}
    if run.members:
        extra["members"] = {m.path.name: severity_metrics(o, y, run.head, run.task.severities, full=False,
                                                          threshold=cut)
                            for m, (o, _, _) in zip(members, outs)}
    if settings.n_boot:
        intervals = bootstrap_intervals(outputs, y, run.head, run.task.severities, n_boot=settings.n_boot, seed=0,
                                        threshold=cut)
        extra["intervals"] = {name: list(bounds) for name, bounds in intervals.items()}
        extra["bootstrap"] = {"resamples": settings.n_boot, "level": 0.95, "seed": 0, "unit": "cell"}
    metrics = write_evaluation(out_dir, outputs, y, run.task, run.head, extra=extra, threshold=cut)
    metrics["out_dir"] = str(out_dir)
    return metrics

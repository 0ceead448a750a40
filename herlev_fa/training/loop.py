"""Training: a config -> one run folder per trained fold (and a cross-validated summary).

The steps, each in its own module: scan the folder (`data.items`), split into stratified folds,
decode every image once (`data.images`), build the fold's DataLoaders (`data.feed`, or the
DataBlock of `data.datablock` for `--augment albumentations`) and Learner (`training.learner`),
fit (fine-tune when starting from pretrained weights, one-cycle from
scratch), keep the best epoch (`callbacks.KeepBest`), evaluate it (`evaluate`) and save the run
(`runs`). `lr_find` shares the same preparation.

Started by `accelerate launch` or `torchrun` with several processes, the fits run data-parallel
(`training.distributed`); everything else runs in every process, but only rank 0 writes
(docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.callback.mixup import CutMix, MixUp
from fastai.learner import AvgSmoothLoss
from fastai.torch_core import num_distrib, set_seed
from fastcore.basics import noop

from herlev_fa.training import checkpoint
from herlev_fa.atomic import write_json, write_text
from herlev_fa.training.callbacks import (BF16, BatchLines, ChannelsLast, EpochLine, EpochLog, KeepBest, LossParts,
                                         MseWarmup, WeightAverage)
from herlev_fa.training.tracking import check_tracker, tracked
from herlev_fa.config import CONFIG_FILE, TrainConfig, resolve_device, resolve_precision
from herlev_fa.data.augment import get_policy
from herlev_fa.data.datablock import datablock, training_dataloaders
from herlev_fa.data.feed import build_dataloaders
from herlev_fa.data.images import decode_all
from herlev_fa.data.items import assign_folds, inner_split, scan
from herlev_fa.errors import HerlevError, missing
from herlev_fa.evaluation import write_evaluation
from herlev_fa.labels import Task, get_task, load_class_map
from herlev_fa.metrics import SCALAR_METRICS, learned_nothing
from herlev_fa.model.network import build_model, check_arch, normalisation
from herlev_fa.training.distributed import as_single_process, data_parallel, from_main, is_main, process_group
from herlev_fa.training.learner import build_learner
from herlev_fa.figures import lr_find_png, training_curves_png
from herlev_fa.progress import logging_to_file
from herlev_fa.runs import FORMAT, RunRecord, integrity, save_folds, save_model, save_predictions, selection, versions


@dataclass
class Prepared:
    """A dataset ready for training: task, item table with a `fold` column, decoded cache."""

    task: Task
    items: pd.DataFrame
    cache: dict[str, np.ndarray]
    skipped: list[str] = field(default_factory=list)


@dataclass
class TrainResult:
    """What `train` produced: run folders (one per fold), their metrics, the CV summary if any."""

    root: Path
    runs: list[Path]
    metrics: list[dict]
    summary: dict | None = None


def resolve_task(cfg: TrainConfig) -> Task:
    return load_class_map(cfg.data.classes) if cfg.data.classes is not None else get_task(cfg.data.task)


def prepare(cfg: TrainConfig, task: Task) -> Prepared:
    """Scan, decode (once, for every fold) and split the dataset of `cfg`."""
    items = scan(cfg.data.data, task)
    cache, bad = decode_all(items["path"], cfg.data.size, skip_bad=cfg.data.skip_bad,
                            progress=not cfg.quiet and is_main())
    items = items[~items["path"].isin(bad)].reset_index(drop=True)
    items["fold"] = assign_folds(items, cfg.data.folds, cfg.data.seed)
    return Prepared(task, items, cache, bad)


def run_yaml(cfg: TrainConfig) -> str:
    """The run's settings as `herlev train --config` reads them (how this call ran, name, resume, quiet, left out)."""
    import yaml

    settings = {k: v for k, v in cfg.to_json().items() if k not in ("name", "resume", "quiet")}
    return "# herlev train --config run.yaml trains this run again (options typed beside it override it)\n" + \
        yaml.safe_dump(settings, sort_keys=False)


def _plain_lines(cfg: TrainConfig) -> bool:
    """Plain progress lines instead of bars: not quiet, stdout a log (`progress.logging_to_file`),
    the writing process."""
    return not cfg.quiet and logging_to_file() and is_main()


def set_determinism(seed: int, deterministic: bool) -> None:
    """Seed every generator; with `deterministic`, also force deterministic GPU kernels.

    CPU training is reproducible either way. On a GPU, `deterministic` turns off cuDNN's
    autotuner and makes torch pick deterministic kernels (warning where none exists), at a cost
    in speed.
    """
    set_seed(seed, reproducible=deterministic)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def speed_callbacks(device: str, precision: str) -> list:
    """The fast path: bf16 autocast where asked for, channels-last memory on CUDA."""
    cbs = [BF16()] if resolve_precision(precision, device) == "bf16" else []
    return cbs + ([ChannelsLast()] if device.startswith("cuda") else [])


def _fit_learner(cfg: TrainConfig, data: Prepared, fold: int, device: str, cbs: list, path: Path):
    set_determinism(cfg.data.seed, cfg.deterministic)
    cbs = [*speed_callbacks(device, cfg.precision), *cbs]
    model = build_model(cfg.model, data.task)
    if cfg.mse_warmup > 0 and model.head.weighted:
        cbs.append(MseWarmup(cfg.mse_warmup))
    if cfg.ema:
        cbs.append(WeightAverage(cfg.ema))
    if cfg.mixup or cfg.cutmix:
        cbs.append(MixUp(cfg.mixup) if cfg.mixup else CutMix(cfg.cutmix))
    mean, std = normalisation(model.net)
    held = (data.items["fold"] == fold).to_numpy()  # [N] the held-out fold
    n_train = int((~held).sum())
    if cfg.data.bs > n_train:  # the loaders take what there is: said once, up front
        warnings.warn(f"--bs {cfg.data.bs} is more than the {n_train} training images of fold {fold}: batches of "
                      f"{n_train} are used", stacklevel=2)
    # --keep best chooses on an inner split of the training folds; the held-out fold is a third loader
    val_split = cfg.val_split if cfg.keep == "best" else None
    if cfg.data.augment == "albumentations":  # the fastai DataBlock: each image augmented on CPU workers
        block = datablock(data.task, cfg.data.size, mean, std, fold, get_policy(cfg.data.policy), val_split,
                          cfg.data.seed, data.cache)
        dls = training_dataloaders(block, data.items, cfg.data.bs, device, cfg.data.workers, cfg.data.balance)
    else:  # the device feed
        inner = None if val_split is None else inner_split(data.items, fold, val_split, cfg.data.seed)
        dls = build_dataloaders(data.items, data.cache, data.task, valid=held if inner is None else inner,
                                bs=cfg.data.bs, mean=mean, std=std, device=device, augment=cfg.data.augment,
                                held_out=None if inner is None else held, policy=cfg.data.policy,
                                balance=cfg.data.balance)
    learn = build_learner(dls, model, data.task, cfg.model.mse_weight, cfg.wd, cbs=cbs, path=path,
                          smoothing=cfg.label_smoothing)
    return learn, mean, std


def _quiet(learn, quiet: bool):
    """No fastai bars nor epoch table when asked, or when stdout is a log (`EpochLine` writes plain lines there)."""
    if not (quiet or logging_to_file()):
        return contextlib.nullcontext()
    stack = contextlib.ExitStack()
    stack.enter_context(learn.no_bar())
    stack.enter_context(learn.no_logging())
    return stack


def _suggest_lr(learn) -> tuple[float, list[float], list[float]]:
    rec = learn.recorder
    on_device = rec.smooth_loss
    # lr_find reads the loss every step anyway, and its suggestion wants host numbers. Set on the
    # recorder itself: fastai's Callback.__setattr__ warns about "shadowing" learn.smooth_loss,
    # which the recorder itself writes every batch.
    object.__setattr__(rec, "smooth_loss", AvgSmoothLoss(beta=on_device.beta))
    try:
        suggestion = learn.lr_find(show_plot=False)
    finally:
        object.__setattr__(rec, "smooth_loss", on_device)
    lr = float(suggestion.valley)
    if not math.isfinite(lr) or lr <= 0:
        raise HerlevError("lr_find found no usable learning rate (the loss never fell); pass --lr explicitly")
    return lr, [float(x) for x in rec.lrs], [float(x) for x in rec.losses]


@dataclass(frozen=True)
class Phase:
    """One fastai one-cycle fit: the whole from-scratch schedule, or a stage of fine-tuning."""

    epochs: int
    lr: float | slice
    pct_start: float
    div: float
    frozen: bool


def schedule(cfg: TrainConfig, lr: float) -> list[Phase]:
    """The fits of a run: fastai's `fine_tune` stages for starting weights, one-cycle from scratch.

    Written out (rather than calling `fine_tune`) so that a resumed run can start inside either stage.
    """
    if cfg.model.pretrained or cfg.model.weights is not None:
        return [Phase(1, slice(lr), pct_start=0.99, div=25.0, frozen=True),
                Phase(cfg.epochs, slice(lr / 2 / 100, lr / 2), pct_start=0.3, div=5.0, frozen=False)]
    return [Phase(cfg.epochs, lr, pct_start=0.25, div=25.0, frozen=False)]


def train_fold(cfg: TrainConfig, data: Prepared, fold: int, run_dir: Path, device: str, cbs: Sequence = ()) -> dict:
    """Train on every fold but `fold`, evaluate the kept epoch (`cfg.keep`) on `fold`, write the run folder.

    `cbs`: more fastai callbacks for the fits (a timer, a logger).

    With `cfg.resume`, a checkpoint in `run_dir` is continued from its last completed epoch.
    In a distributed launch every rank trains and gets the metrics, but only rank 0 writes.
    """
    started = time.time()
    resume = _open_fold(cfg, data, run_dir)
    keep, log = KeepBest(last=cfg.keep == "last"), EpochLog(run_dir / "log.csv", fold=fold)
    # fastai's lr_find saves its temporary state in scratch; the tracker's run (--log) spans the fold's fits
    with tempfile.TemporaryDirectory() as scratch, tracked(cfg.log, run_dir, fold, cfg.to_json()) as trackers:
        learn, mean, std = _fit_learner(cfg, data, fold, device, [LossParts(), keep, log, *trackers, *cbs],
                                        Path(scratch))
        with _quiet(learn, cfg.quiet):
            lr = _learning_rate(cfg, learn, resume)
            _fit(cfg, learn, lr, resume, keep, log, fold, run_dir, device)
            if not is_main():  # rank 0 predicts the whole held-out fold, outside the distributed context
                return from_main(None)
            with as_single_process():  # the held-out fold: the third loader when the epoch was chosen on an inner split
                out, y = learn.get_preds(dl=learn.dls[-1], act=noop)
    metrics = _write_run(cfg, data, fold, run_dir, learn.model.cpu().eval(), out.float().numpy(), y.numpy(), mean, std,
                         lr, int(keep.best_epoch), started, device)
    checkpoint.remove(run_dir)
    return from_main(metrics)


def _open_fold(cfg: TrainConfig, data: Prepared, run_dir: Path) -> checkpoint.Resume | None:
    """Create the fold's folder and find the checkpoint to continue (`--resume`);
    a new run writes its folds file first."""
    main = is_main()
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    resume = checkpoint.find_matching(run_dir, cfg.to_json()) if cfg.resume else None
    if resume is None and main:
        save_folds(run_dir, data.items, data.items["fold"].to_numpy())
    return resume


def _learning_rate(cfg: TrainConfig, learn, resume: checkpoint.Resume | None) -> float:
    """The checkpoint's learning rate, `--lr`, or lr_find's suggestion
    (every process finds its own; rank 0's is used)."""
    if resume is not None or cfg.lr is not None:
        return resume.lr if resume else cfg.lr
    with as_single_process():
        lr = _suggest_lr(learn)[0]
    return from_main(lr)


def _fit(cfg: TrainConfig, learn, lr: float, resume: checkpoint.Resume | None, keep: KeepBest, log: EpochLog,
         fold: int, run_dir: Path, device: str) -> None:
    """Fit the phases of `schedule`, from the checkpoint's epoch when resuming, checkpointing as it goes."""
    phases = schedule(cfg, lr)
    lines = EpochLine(f"fold {fold} ", sum(p.epochs for p in phases)) if _plain_lines(cfg) else None
    if lines is not None:
        learn.add_cb(lines)
    if resume is not None and is_main() and not cfg.quiet:
        print(f"resuming '{run_dir}' from {resume.describe([p.epochs for p in phases])} "
              f"(checkpoint of {time.strftime('%H:%M:%S', time.localtime(resume.path.stat().st_mtime))})",
              file=sys.stdout if lines is not None else sys.stderr, flush=True)
    config = cfg.to_json()
    with data_parallel(learn, device):
        for i, phase in enumerate(phases):
            start = 0 if resume is None else resume.start(i, phase.epochs)
            if start is None:
                continue
            learn.freeze() if phase.frozen else learn.unfreeze()
            if resume is not None:
                checkpoint.restore(learn, keep, log, resume)
                resume = None
            if lines is not None:
                lines.offset = sum(p.epochs for p in phases[:i])
            saver = checkpoint.SaveCheckpoint(run_dir, keep, log, i, lr, config, cfg.checkpoint_every)
            learn.fit_one_cycle(phase.epochs, phase.lr, pct_start=phase.pct_start, div=phase.div,
                                start_epoch=start, cbs=[saver])
    if cfg.ema:  # the run keeps the weight average
        learn.weight_average.apply()
    if resume is not None:  # killed after the last epoch: only the kept weights are left to restore
        learn.model.load_state_dict(resume.weights())
        keep.best_epoch = int(resume.state["best"]["epoch"])


def _write_run(cfg: TrainConfig, data: Prepared, fold: int, run_dir: Path, model: torch.nn.Module, out: np.ndarray,
               y: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], lr: float, best_epoch: int,
               started: float, device: str) -> dict:
    """The run folder of a trained fold: held-out predictions [N, C] and metrics, weights, curves,
    `herlev.json` last."""
    held = data.items[data.items["fold"] == fold]  # get_preds keeps the valid split's order
    save_predictions(run_dir, held, fold, out, y, model.head, data.task.severities)
    metrics = write_evaluation(run_dir, out, y, data.task, model.head,
                               extra={"fold": fold, "best_epoch": best_epoch, "kept": selection(cfg.to_json())})
    save_model(run_dir, model, data.task, cfg.data.size, mean, std)
    log = run_dir / "log.csv"
    if log.is_file():
        training_curves_png(pd.read_csv(log), run_dir / "training_curves.png")
    record = RunRecord(
        format=FORMAT, arch=cfg.model.arch, head=model.head.name, task=data.task.to_json(), image_size=cfg.data.size,
        mean=list(mean), std=list(std), fold=fold, n_folds=cfg.data.folds,
        data_root=str(Path(cfg.data.data).expanduser().resolve()), mse_weight=cfg.model.mse_weight,
        seed=cfg.data.seed, lr=lr, best_epoch=best_epoch, kept=selection(cfg.to_json()), skipped_images=data.skipped,
        metrics={k: metrics[k] for k in SCALAR_METRICS}, train_seconds=round(time.time() - started, 1),
        device=device, processes=max(num_distrib(), 1), versions=versions(), config=cfg.to_json(),
        integrity=integrity(run_dir, data.task))  # the hashes: an edit after training is reported at load
    write_json(run_dir / "herlev.json", record.to_json())
    return metrics


def summarize(metrics: list[dict]) -> dict:
    """Mean and std (ddof 0) of each scalar metric over folds; NaN for one undefined on every fold (ece of `reg`)."""
    out = {}
    for name in SCALAR_METRICS:
        values = np.array([m.get(name, math.nan) for m in metrics], dtype=float)  # runs from before a metric existed
        defined = values[~np.isnan(values)]
        mean, std = (float(defined.mean()), float(defined.std())) if len(defined) else (math.nan, math.nan)
        out[name] = {"mean": mean, "std": std, "folds": values.tolist()}
    return out


def summary_markdown(summary: dict, title: str, warnings_: Sequence[str] = ()) -> str:
    """The cross-validated summary table; `warnings_` (e.g. `learned_nothing` per fold) go first,
    where they are read."""
    lines = [f"# {title}", ""]
    if warnings_:
        lines += [f"**Warning**: {w}." for w in warnings_] + [""]
    lines += ["| metric | mean | std | per fold |", "|---|---|---|---|"]
    for name, s in summary.items():
        folds = ", ".join(f"{v:.3f}" for v in s["folds"])
        lines.append(f"| {name} | {s['mean']:.3f} | {s['std']:.3f} | {folds} |")
    return "\n".join(lines) + "\n"


def fold_warnings(names: Sequence[str], metrics: Sequence[dict], classes: Sequence[str]) -> list[str]:
    """One line per fold model that learned nothing (`metrics.learned_nothing`): 'fold1: the model predicts ...'."""
    found = [(name, learned_nothing(m, classes)) for name, m in zip(names, metrics)]
    return [f"{name}: the model {problem}" for name, problem in found if problem]


def _resumable_root(cfg: TrainConfig) -> Path:
    """The run folder to resume: `--name`, or the newest unfinished run under `--out`."""
    if cfg.name:
        root = cfg.out / cfg.name
        if not root.is_dir():
            raise HerlevError(f"nothing to resume: {missing(root, 'run folder')}")
        marks = ("herlev.json", "checkpoint", "folds.csv")  # folds.csv: written before the first epoch
        if not any((folder / mark).exists() for folder in (root, *root.glob("fold*")) for mark in marks):
            raise HerlevError(f"nothing to resume: '{root}' is not a run folder (no herlev.json, checkpoint or "
                              "folds.csv in it); start a new run under another --name, without --resume")
        return root
    unfinished = [p.parent for p in cfg.out.glob("*/checkpoint") if p.is_dir()]
    unfinished += [p.parent.parent for p in cfg.out.glob("*/fold*/checkpoint") if p.is_dir()]
    if not unfinished:
        raise HerlevError(f"nothing to resume under '{cfg.out}': no run with a checkpoint; pass --name")
    return max(unfinished, key=lambda p: p.stat().st_mtime)


def _run_root(cfg: TrainConfig) -> Path:
    if cfg.resume:
        return _resumable_root(cfg)
    root = cfg.out / (cfg.name or f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.model.arch}-{cfg.model.head}")
    if cfg.name is None:  # two default names in the same second: number the second one
        base, n = root, 2
        while root.exists():
            root, n = base.with_name(f"{base.name}-{n}"), n + 1
    if root.exists() and any(root.iterdir()):
        raise HerlevError(f"run folder '{root}' already exists and is not empty; pass --resume to continue it, "
                          "or another --name or --out")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HerlevError(f"cannot create run folder '{root}': {e.strerror or e}; choose another --out") from None
    return root


def _shared_run_root(cfg: TrainConfig) -> Path:
    """`_run_root` in rank 0 (it creates the folder); every rank gets its answer, or its error."""
    if not is_main():
        found = from_main(None)
    else:
        try:
            found = from_main(_run_root(cfg))
        except HerlevError as e:
            from_main(str(e))
            raise
    if isinstance(found, str):
        raise HerlevError(found)
    return found


def _finished(run_dir: Path, cfg: TrainConfig) -> dict:
    """The metrics of a fold run that `--resume` finds finished, if it was trained with these settings.

    Raises:
        HerlevError: it was trained with other settings (the message names them): --resume never
            silently ignores options.
    """
    record = RunRecord.read(run_dir)  # validated: a damaged sidecar is a one-line error, not a traceback
    diff = checkpoint.mismatch(record.config, cfg.to_json())
    if diff:
        raise HerlevError(f"run '{run_dir}' finished with other settings ({diff}); --resume only continues a run "
                          "with its own options: train under another --name")
    if is_main() and not cfg.quiet:
        print(f"'{run_dir}' had finished: nothing to resume, its metrics are reused",
              file=sys.stdout if logging_to_file() else sys.stderr, flush=True)
    metrics = run_dir / "metrics.json"
    if not metrics.is_file():
        raise HerlevError(f"run '{run_dir}' has no metrics.json; the run folder is damaged: train under another --name")
    return json.loads(metrics.read_text(encoding="utf-8"))


def train(cfg: TrainConfig) -> TrainResult:
    """Train `cfg.fold` (or every fold) and write one run folder per fold.

    Raises:
        HerlevError: any problem a user can fix (data, options, output folder, weights).
    """
    device = resolve_device(cfg.device)
    with process_group(device):
        return _train(cfg, device)


def _train(cfg: TrainConfig, device: str) -> TrainResult:
    task = resolve_task(cfg)
    # build the model once before any decoding or output, so weight problems fail fast and clean
    build_model(cfg.model, task)
    check_tracker(cfg.log)  # a missing package is said before any work
    data = prepare(cfg, task)
    root = _shared_run_root(cfg)
    if is_main():
        write_text(root / CONFIG_FILE, run_yaml(cfg))
    folds = range(cfg.data.folds) if cfg.fold is None else [cfg.fold]
    runs, metrics = [], []
    for fold in folds:
        run_dir = root if cfg.fold is not None else root / f"fold{fold}"
        if cfg.resume and (run_dir / "herlev.json").is_file():  # finished before the interruption
            metrics.append(_finished(run_dir, cfg))
        else:
            metrics.append(train_fold(cfg, data, fold, run_dir, device))
        runs.append(run_dir)
    summary = summarize(metrics) if cfg.fold is None else None
    if summary is not None and is_main():
        write_json(root / "cv_summary.json", summary)
        write_text(root / "cv_summary.md",
                   summary_markdown(summary, f"{cfg.model.arch} / {cfg.model.head}: "
                                             f"{cfg.data.folds}-fold cross-validation",
                                    fold_warnings([r.name for r in runs], metrics, task.classes)))
    return TrainResult(root, runs, metrics, summary)


def lr_find(cfg: TrainConfig, out: str | Path) -> tuple[float, Path]:
    """fastai's lr_find on fold `cfg.fold` (default 0): the suggested learning rate and the plot's path."""
    device = resolve_device(cfg.device)
    task = resolve_task(cfg)
    check_arch(cfg.model.arch)
    data = prepare(cfg, task)
    try:
        Path(out).mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise HerlevError(f"cannot create output folder '{out}': {e.strerror or e}; choose another --out") from None
    # fastai's finder saves the model's state in its scratch folder: inside --out, so that even a killed
    # process leaves nothing in the system's temporary folder (an interrupted one removes it)
    with tempfile.TemporaryDirectory(dir=out, prefix=".lr_find-") as scratch:
        lines = [BatchLines("lr_find", 100)] if _plain_lines(cfg) else []  # fastai's lr_find: at most 100 steps
        learn, _, _ = _fit_learner(cfg, data, cfg.fold or 0, device, lines, Path(scratch))
        with _quiet(learn, cfg.quiet):
            lr, lrs, losses = _suggest_lr(learn)
    return lr, lr_find_png(lrs, losses, lr, Path(out) / "lr_find.png")

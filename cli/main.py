"""The `herlev` command: one short function per command; each parses, builds a config, calls the library.

Nothing here trains or reads data itself. User mistakes surface as `HerlevError`, printed on one
line with exit status 2.
"""

from __future__ import annotations

import json
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

import herlev_fa
from herlev_cli.app import (DATA, DEFAULT_RUNS, EVAL, LR_DEFAULT, MODEL, TRAIN, Arch, Augment, Balance, Bs,
                            CheckpointEvery, Classes, Cutmix, Data, Device, Ema, Epochs, Folds, Head, Keep,
                            LabelSmoothing, Lr, Mixup, MseWarmup, MseWeight, Policy, Pretrained, Quiet, Seed, Size,
                            SkipBad, Task, Threshold, ValSplit, Wd, Weights, Workers,
                            app, as_text, bars, data_dir, flag, option, out, out_folder, parse_lr, run_dir, user_errors)
from herlev_fa.atomic import finite_or_none
from herlev_fa.config import DataConfig, EvalSettings, ModelConfig, TrainConfig, help_of
from herlev_fa.errors import HerlevError


def _fold(value: str) -> int | None:
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise HerlevError(f"--fold '{value}' is not a fold number or 'all'") from None


def _metrics_table(title: str, columns: dict[str, dict], intervals: dict | None = None) -> Table:
    """One row per scalar metric (the library's one list), one column per run or model.

    `intervals` (metric -> [low, high]) are printed beside the first column's values.
    """
    from herlev_fa.metrics import SCALAR_METRICS

    table = Table(title=title)
    table.add_column("metric")
    for i, name in enumerate(columns):
        table.add_column(f"{name} [95% CI]" if intervals and i == 0 else name, justify="right", overflow="fold")
    for metric in SCALAR_METRICS:
        cells = [_number(metric, m.get(metric, math.nan)) for m in columns.values()]
        if intervals and metric in intervals:
            low, high = intervals[metric]
            cells[0] += f" [{_number(metric, low)}, {_number(metric, high)}]"
        table.add_row(metric, *cells)
    return table


def screening_line(metrics: dict) -> str:
    """How the table's two binary accuracies differ, and the threshold of the screening call."""
    score = "P(abnormal)" if metrics.get("ece") is not None and not math.isnan(metrics["ece"]) else "severity score"
    return (f"screening call: {score} ≥ {metrics['threshold']:.3g} (screening_accuracy, sensitivity, specificity); "
            "binary_accuracy: the predicted class mapped to normal / abnormal, as in the poster")


def _number(metric: str, value: float) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{value:.0f}" if metric in ("normal_cis", "normal_severe") else f"{value:.3f}"


@app.command(rich_help_panel="Getting started")
@user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for the demo data and run.")] = Path("herlev_demo"),
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 20,
    quiet: Quiet = False,
) -> None:
    """The built-in default job: synthetic Herlev data -> small model on the CPU -> evaluation."""
    data = out_dir / "data"
    # every option checked before the first synthetic file is written
    cfg = TrainConfig(DataConfig(data, size=64, bs=32, seed=0), ModelConfig("test_resnet", pretrained=False),
                      epochs=epochs, lr=3e-3, device="cpu", out=out_dir / "runs", quiet=not bars(quiet))
    if not (data / "README.txt").is_file():
        herlev_fa.write_synthetic(data, per_class=40, size=64, seed=0)
        out.print(f"synthetic Herlev-format data: [bold]{data}[/]")
    result = herlev_fa.train(cfg)
    metrics = herlev_fa.evaluate(result.runs[0], EvalSettings(device="cpu", progress=not quiet))
    out.print(_metrics_table("held-out fold 0 of the synthetic data", {result.runs[0].name: metrics},
                             metrics["intervals"]))
    run = result.runs[0]
    out.print(f"model:   [bold]{run / 'model.safetensors'}[/] (+ config.json, herlev.json)")
    out.print(f"metrics: [bold]{run / 'metrics.json'}[/], per epoch: {run / 'log.csv'}")
    out.print(f"plots:   [bold]{run / 'confusion_matrix.png'}[/], {run / 'score_distribution.png'}, "
              f"{run / 'roc.png'}, {run / 'reliability.png'}, {run / 'training_curves.png'}")


@app.command(rich_help_panel="Data")
@user_errors
def synth(
    out_dir: Annotated[Path, typer.Argument(metavar="OUT", help="Folder to create (must be new or empty).")],
    per_class: Annotated[int, typer.Option(help="Images per class folder (7 folders).")] = 30,
    size: Annotated[int, typer.Option(help="Image width in pixels (height varies 80-100%).")] = 96,
    seed: Seed = 0,
) -> None:
    """Write a synthetic dataset in the exact Herlev layout (.BMP images, -d.bmp masks)."""
    path = herlev_fa.write_synthetic(out_dir, per_class=per_class, size=size, seed=seed)
    out.print(f"wrote {7 * per_class} synthetic cells to [bold]{path}[/]")


# train's options by the section of TrainConfig they set (out_dir sets `out`)
DATA_OPTIONS = ("data", "task", "classes", "size", "folds", "seed", "bs", "skip_bad", "augment", "policy", "balance",
                "workers")
MODEL_OPTIONS = ("arch", "head", "pretrained", "weights", "mse_weight")
TRAIN_OPTIONS = ("epochs", "lr", "wd", "keep", "val_split", "mse_warmup", "label_smoothing", "ema", "mixup", "cutmix",
                 "fold", "device", "out_dir", "name", "checkpoint_every", "resume", "deterministic", "precision", "log")


def _from_config_file(path: Path, ctx: typer.Context, values: dict) -> TrainConfig:
    """defaults < the config file < the options typed on the command line."""
    from herlev_fa.config import merge_settings, read_config_file, train_config

    # by name: Typer carries its own copy of click, whose ParameterSource is not click's
    typed = {n for n in ctx.params if getattr(ctx.get_parameter_source(n), "name", "") == "COMMANDLINE"}
    values = {**values, "lr": parse_lr(values["lr"]), "fold": _fold(values["fold"])}
    given = {"data": {k: values[k] for k in DATA_OPTIONS if k in typed},
             "model": {k: values[k] for k in MODEL_OPTIONS if k in typed},
             **{"out" if k == "out_dir" else k: values[k] for k in TRAIN_OPTIONS if k in typed}}
    settings = merge_settings(read_config_file(path), given)
    if "data" not in settings.get("data", {}):
        settings = merge_settings(settings, {"data": {"data": str(data_dir(None))}})
    settings.setdefault("out", str(DEFAULT_RUNS))
    return train_config({**settings, "quiet": values["quiet"]}, source=f"config file '{path}'")


@app.command(rich_help_panel="Training")
@user_errors
def train(
    ctx: typer.Context,
    data: Data = None,
    arch: Arch = MODEL["arch"],
    head: Head = MODEL["head"],
    task: Task = DATA["task"],
    classes: Classes = None,
    pretrained: Pretrained = MODEL["pretrained"],
    weights: Weights = None,
    mse_weight: MseWeight = MODEL["mse_weight"],
    mse_warmup: MseWarmup = TRAIN["mse_warmup"],
    label_smoothing: LabelSmoothing = TRAIN["label_smoothing"],
    ema: Ema = TRAIN["ema"],
    mixup: Mixup = TRAIN["mixup"],
    cutmix: Cutmix = TRAIN["cutmix"],
    folds: Folds = DATA["folds"],
    fold: Annotated[str, option(TrainConfig, "fold")] = str(TRAIN["fold"]),
    epochs: Epochs = TRAIN["epochs"],
    lr: Lr = LR_DEFAULT,
    wd: Wd = TRAIN["wd"],
    keep: Keep = TRAIN["keep"],
    val_split: ValSplit = TRAIN["val_split"],
    bs: Bs = DATA["bs"],
    augment: Augment = DATA["augment"],
    policy: Policy = DATA["policy"],
    balance: Balance = DATA["balance"],
    workers: Workers = None,
    checkpoint_every: CheckpointEvery = TRAIN["checkpoint_every"],
    log: Annotated[Optional[str], option(TrainConfig, "log")] = None,
    size: Size = DATA["size"],
    seed: Seed = DATA["seed"],
    device: Device = TRAIN["device"],
    out_dir: Annotated[Path, option(TrainConfig, "out", "--out", parser=as_text, metavar="<path>")] = DEFAULT_RUNS,
    name: Annotated[Optional[str], option(TrainConfig, "name")] = None,
    skip_bad: SkipBad = DATA["skip_bad"],
    resume: Annotated[bool, flag("--resume", help=help_of(TrainConfig, "resume"))] = TRAIN["resume"],
    deterministic: Annotated[bool, flag("--deterministic",
                                        help=help_of(TrainConfig, "deterministic"))] = TRAIN["deterministic"],
    precision: Annotated[str, option(TrainConfig, "precision")] = TRAIN["precision"],
    quiet: Quiet = TRAIN["quiet"],
    as_json: Annotated[bool, flag("--json", help="Print the run folders and metrics as JSON on stdout "
                                                 "(implies --quiet).")] = False,
    config: Annotated[Optional[Path], typer.Option(help="A run configuration (YAML, the form of the run.yaml every run "
                                                        "folder holds); options typed here override it.")] = None,
) -> None:
    """Train a severity classifier; writes a run folder with weights, metrics and plots."""
    if config is not None:
        cfg = _from_config_file(config, ctx, {**locals(), "quiet": not bars(quiet or as_json)})
    else:
        cfg = TrainConfig(
            DataConfig(data_dir(data), task=task, classes=classes, size=size, folds=folds, seed=seed, bs=bs,
                       skip_bad=skip_bad, augment=augment, policy=policy, balance=balance, workers=workers),
            ModelConfig(arch, head=head, pretrained=pretrained, weights=weights, mse_weight=mse_weight),
            epochs=epochs, lr=parse_lr(lr), wd=wd, keep=keep, val_split=val_split, mse_warmup=mse_warmup,
            label_smoothing=label_smoothing, ema=ema, mixup=mixup, cutmix=cutmix, fold=_fold(fold), device=device,
            out=out_folder(out_dir), name=name, checkpoint_every=checkpoint_every, log=log,
            quiet=not bars(quiet or as_json), resume=resume, deterministic=deterministic, precision=precision,
        )
    from fastai.torch_core import rank_distrib

    result = herlev_fa.train(cfg)
    if rank_distrib():  # launched data-parallel: rank 0 reports
        return
    if as_json:
        typer.echo(json.dumps(finite_or_none({"root": str(result.root), "runs": [str(r) for r in result.runs],
                                              "metrics": result.metrics, "summary": result.summary})))
        return
    out.print(_metrics_table("held-out metrics", {r.name: m for r, m in zip(result.runs, result.metrics)}))
    if result.summary:
        out.print(f"cross-validated summary: [bold]{result.root / 'cv_summary.md'}[/]")
    out.print(f"run folder: [bold]{result.root}[/]")


@app.command(rich_help_panel="Training")
@user_errors
def evaluate(
    run: Annotated[Optional[Path], typer.Argument(help="Run folder (holds herlev.json). Default: the newest "
                                                       "finished run under ./runs (or $HERLEV_RUNS).")] = None,
    data: Annotated[Optional[Path], option(EvalSettings, "data")] = None,
    split: Annotated[Optional[str], option(EvalSettings, "split")] = None,
    out_dir: Annotated[Optional[Path], option(EvalSettings, "out", "--out", parser=as_text, metavar="<path>")] = None,
    bs: Annotated[int, option(EvalSettings, "bs")] = EVAL["bs"],
    device: Annotated[str, option(EvalSettings, "device")] = EVAL["device"],
    skip_bad: SkipBad = EVAL["skip_bad"],
    bootstrap: Annotated[int, option(EvalSettings, "n_boot")] = EVAL["n_boot"],
    threshold: Threshold = None,
    as_json: Annotated[bool, flag("--json", help="Print the metrics as JSON on stdout.")] = False,
) -> None:
    """Metrics with 95% intervals, confusion matrix, ROC and reliability diagram of a run on its held-out fold (or --data).

    The folder of a cross-validated run (fold0/ .. foldK/) evaluates the ensemble of its fold
    models beside each fold model, on new cells (--data).
    """  # noqa: E501 (the first line is the command's one-line summary in --help and docs/cli.md)
    out_dir = out_dir if out_dir is None else out_folder(out_dir)
    settings = EvalSettings(data=data, split=split, out=out_dir, bs=bs, device=device, skip_bad=skip_bad,
                            progress=not as_json, n_boot=bootstrap, threshold=threshold)  # checked before any work
    run = run_dir(run)
    metrics = herlev_fa.evaluate(run, settings)
    if as_json:
        typer.echo(json.dumps(finite_or_none(metrics)))
        return
    columns = {"ensemble" if "members" in metrics else run.name: metrics, **metrics.get("members", {})}
    out.print(_metrics_table(f"{metrics['data']} (n={metrics['n']}, {metrics['model']})", columns,
                             metrics.get("intervals")))
    recall = ", ".join(f"{c} {r:.2f}" if r is not None and math.isfinite(r) else f"{c} -"
                       for c, r in zip(metrics["classes"], metrics["per_class_recall"]))
    out.print(f"per-class recall: {recall}")
    out.print(f"weights kept: {metrics['kept']}")
    out.print(screening_line(metrics), highlight=False)
    if "bootstrap" in metrics:
        out.print(f"[95% CI]: percentile bootstrap over {metrics['bootstrap']['resamples']} resamples of the cells")
    out.print(f"written to [bold]{metrics['out_dir']}[/] (metrics.json, confusion_matrix.png, score_distribution.png, "
              f"roc.png{', reliability.png' if not math.isnan(metrics['ece']) else ''})")


@app.command("lr-find", rich_help_panel="Training")
@user_errors
def lr_find(
    data: Data = None,
    arch: Arch = MODEL["arch"],
    head: Head = MODEL["head"],
    task: Task = DATA["task"],
    classes: Classes = None,
    pretrained: Pretrained = MODEL["pretrained"],
    weights: Weights = None,
    folds: Folds = DATA["folds"],
    bs: Bs = DATA["bs"],
    size: Size = DATA["size"],
    seed: Seed = DATA["seed"],
    device: Device = TRAIN["device"],
    out_dir: Annotated[Path, typer.Option("--out", help="Where to write lr_find.png.", parser=as_text,
                                                 metavar="<path>")] = Path("."),
    quiet: Quiet = TRAIN["quiet"],
) -> None:
    """Run fastai's learning-rate finder on fold 0; prints the suggestion and writes lr_find.png."""
    cfg = TrainConfig(
        DataConfig(data_dir(data), task=task, classes=classes, size=size, folds=folds, seed=seed, bs=bs),
        ModelConfig(arch, head=head, pretrained=pretrained, weights=weights),
        device=device, out=out_folder(out_dir), quiet=not bars(quiet),
    )
    lr, plot = herlev_fa.lr_find(cfg, cfg.out)
    out.print(f"suggested learning rate: [bold]{lr:.2e}[/] (plot: {plot})")


# the other command modules register on the same app; imported here so that the help lists
# the core commands first
import herlev_cli.explain  # noqa: E402,F401  (explain, quantify)
import herlev_cli.predict  # noqa: E402,F401  (predict)
import herlev_cli.reproduce  # noqa: E402,F401  (reproduce)
import herlev_cli.deploy  # noqa: E402,F401  (export, calibrate)


def torch_cache_dir() -> Path:
    """Where torch's compiler cache goes: importing torch._dynamo (timm and torchvision do) creates it,
    by default as `torchinductor_<user>` in the system's temporary folder, where it would outlive every
    command. The user's cache folder instead (`$XDG_CACHE_HOME/herlev_fa/torchinductor`, else
    `~/.cache/...`); where that cannot be created, a temporary folder removed at exit.
    """
    import atexit
    import shutil
    import tempfile

    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "herlev_fa" / "torchinductor"
    try:
        base.mkdir(parents=True, exist_ok=True)
        return base
    except (OSError, RuntimeError):
        scratch = tempfile.mkdtemp(prefix="herlev-torchinductor-")
        atexit.register(shutil.rmtree, scratch, True)
        return Path(scratch)


def main() -> None:
    """Console-script entry point: the process-wide settings the library itself never makes."""
    import signal

    from herlev_cli.app import raise_terminated

    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check when albumentations loads
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(torch_cache_dir())
    signal.signal(signal.SIGTERM, raise_terminated)  # cleaned up and said, as Ctrl-C
    # raised by a dependency at import time, not by anything a user does
    warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)
    app()


if __name__ == "__main__":
    sys.exit(main())

"""The Typer app object, its consoles, the error wrapper and the options shared by several commands.

Command modules (`herlev_cli.main`, `herlev_cli.explain`) import `app` from here and register on it.
"""

from __future__ import annotations

import functools
import os
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console

import herlev_fa
from herlev_fa.errors import HerlevError

app = typer.Typer(name="herlev", help="Train, evaluate and explain cervical-cell severity classifiers on Herlev-format data.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True)
out = Console(soft_wrap=True)
err = Console(stderr=True)

DEFAULT_RUNS = Path(os.environ.get("HERLEV_RUNS", "runs"))  # where train writes, and where a missing --run is looked for
DEFAULT_DATA = Path("data/herlev")  # used when neither --data nor HERLEV_DATA is given


def data_dir(value: Path | None) -> Path:
    """--data, else $HERLEV_DATA, else ./data/herlev; an error naming all three when none exists."""
    if value is not None:
        return value
    env = os.environ.get("HERLEV_DATA")
    candidate = Path(env) if env else DEFAULT_DATA
    if not candidate.is_dir():
        where = f"HERLEV_DATA={env}" if env else f"the default {DEFAULT_DATA}/ (HERLEV_DATA is not set)"
        raise HerlevError(f"no data folder: pass --data DIR, set HERLEV_DATA, or put the data in {DEFAULT_DATA}/; "
                          f"looked at {where}")
    return candidate


def run_dir(value: Path | None) -> Path:
    """The run folder given, else the newest finished run under the default runs folder (said aloud)."""
    if value is not None:
        return value
    from herlev_fa.runs import latest_run

    found = latest_run(DEFAULT_RUNS)
    err.print(f"using the newest run: {found}", highlight=False, soft_wrap=True)
    return found


def model_line(run: Path) -> str:
    """What model a command used: one fold run, or the ensemble of a cross-validated run's fold models."""
    from herlev_fa.ensemble import describe, fold_folders

    folds = fold_folders(run)
    return f"model: the {describe(len(folds))} in {run}" if folds else f"model: {run}"


def user_errors(fn):
    """Print a HerlevError (or an interrupt) as one line and exit non-zero, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HerlevError as e:
            err.print(f"[bold red]error:[/] {e}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: finished files are whole; an unfinished run has no herlev.json")
            raise typer.Exit(130) from None

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"herlev_fa {herlev_fa.__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                                        help="Print the version and exit.")] = False) -> None:
    """Train, evaluate and explain cervical-cell severity classifiers on Herlev-format data."""
    warnings.showwarning = _show_warning  # one readable line per warning, no source location


# Options shared by train and lr-find, declared once.
Data = Annotated[Optional[Path], typer.Option("--data", help="Dataset root: one folder per class, at most two levels "
                                                            "down. Default: $HERLEV_DATA, else ./data/herlev.")]
RunOption = Annotated[Optional[Path], typer.Option("--run", help="Run folder (holds herlev.json). Default: the newest "
                                                                 "finished run under ./runs (or $HERLEV_RUNS).")]
Arch = Annotated[str, typer.Option(help="Any timm architecture, e.g. resnet101, test_resnet, convnext_tiny.")]
Head = Annotated[str, typer.Option(help="cls (cross-entropy) | reg (MSE on severity) | cls_reg (CE + lambda*MSE).")]
Task = Annotated[str, typer.Option(help="severity (5 classes) | herlev7 | binary.")]
Classes = Annotated[Optional[Path], typer.Option("--classes", help="Class map (YAML/JSON): folder -> class and severity.")]
Pretrained = Annotated[bool, typer.Option("--pretrained/--no-pretrained", help="Start from ImageNet weights (timm hub).")]
Weights = Annotated[Optional[Path], typer.Option(help="Local weights file (safetensors / state dict) for offline use.")]
Folds = Annotated[int, typer.Option(help="Number of stratified folds.")]
Size = Annotated[int, typer.Option(help="Images are letterboxed to SIZE x SIZE pixels.")]
Bs = Annotated[int, typer.Option(help="Batch size.")]
Seed = Annotated[int, typer.Option(help="Seed for folds, initialisation and augmentation.")]
Device = Annotated[str, typer.Option(help="auto | cpu | cuda.")]
SkipBad = Annotated[bool, typer.Option("--skip-bad", help="Skip unreadable images with a warning instead of stopping.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars or epoch table.")]
MseWeight = Annotated[float, typer.Option(help="Lambda: weight of the MSE term of cls_reg.")]
MseWarmup = Annotated[float, typer.Option(help="cls_reg: ramp lambda up from 0 over this fraction of training "
                                               "(0: constant).")]
Lr = Annotated[str, typer.Option(help="Peak learning rate, or 'auto' for fastai's lr_find suggestion.")]
Wd = Annotated[float, typer.Option(help="AdamW weight decay.")]
Keep = Annotated[str, typer.Option(help="Weights to evaluate and save: best (lowest validation loss; the validation "
                                        "set is the held-out fold, so slightly optimistic) | last (final epoch).")]


def parse_lr(value: str) -> float | None:
    """--lr: a number, or 'auto' (None: fastai's lr_find suggestion)."""
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise HerlevError(f"--lr '{value}' is not a number or 'auto'") from None

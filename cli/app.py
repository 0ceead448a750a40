"""The Typer app object, its consoles, the error wrapper and the options shared by several commands.

Command modules (`herlev_cli.main`, `herlev_cli.explain`) import `app` from here and register on it.
"""

from __future__ import annotations

import functools
import os
import sys
import warnings
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.markup import escape

import herlev_fa
from herlev_fa.config import (DataConfig, EvalSettings, InferenceSettings, ModelConfig, PredictSettings, TrainConfig,
                              defaults, help_of)
from herlev_fa.errors import HerlevError

LOG_WIDTH = 10_000  # columns of stdout when it is not a terminal (a log file, a pipe)

app = typer.Typer(name="herlev",
                  help="Train, evaluate and explain cervical-cell severity classifiers on Herlev-format data.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=True)
# Redirected to a file, output is a log: no width to fit, so tables never fold a file name mid-name.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else LOG_WIDTH)
err = Console(stderr=True)

# where train writes, and where a missing --run is looked for
DEFAULT_RUNS = Path(os.environ.get("HERLEV_RUNS", "runs"))
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


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, `timeout`, a scheduler's stop), raised like Ctrl-C so that every `finally` and
    temporary folder is cleaned up as for an interrupt; `main` installs the handler."""


def raise_terminated(signum, frame) -> None:
    raise Terminated()


def user_errors(fn):
    """Print a HerlevError (or an interrupt) as one line and exit non-zero, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except HerlevError as e:
            err.print(f"[bold red]error:[/] {escape(e.cli)}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except OSError as e:  # a write outside the atomic helpers that ran out of room: still one line
            from herlev_fa.atomic import OUT_OF_SPACE

            if e.errno not in OUT_OF_SPACE:
                raise
            where = f"cannot write '{e.filename}': " if e.filename else ""
            err.print(f"[bold red]error:[/] {escape(where + OUT_OF_SPACE[e.errno])}; free space, or choose another "
                      "output folder", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None
        except Terminated:
            err.print("[bold red]terminated[/] (SIGTERM): finished files are whole, temporary ones removed; an "
                      "unfinished run has no herlev.json (--resume continues it)", highlight=False, soft_wrap=True)
            raise typer.Exit(143) from None
        except KeyboardInterrupt:
            err.print("[bold red]interrupted[/]: finished files are whole; an unfinished run has no herlev.json")
            raise typer.Exit(130) from None

    return wrapper


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    err.print(f"[yellow]warning:[/] {escape(str(message))}", highlight=False, soft_wrap=True)


def version_callback(value: bool) -> None:
    if value:
        out.print(f"herlev_fa {herlev_fa.__version__}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True,
                                          metavar="", help="Print the version and exit.")] = False,
) -> None:
    """Train, evaluate and explain cervical-cell severity classifiers on Herlev-format data."""
    warnings.showwarning = _show_warning  # one readable line per warning, no source location


# Options shared by several commands, declared once; help texts and defaults live in herlev_fa/config.py.
DATA, MODEL, TRAIN = defaults(DataConfig), defaults(ModelConfig), defaults(TrainConfig)
EVAL, PREDICT = defaults(EvalSettings), defaults(PredictSettings)


def option(cls: type, name: str, *decls: str, **kwargs: Any) -> Any:
    """A typer.Option whose help text is the config field's."""
    return typer.Option(*decls, help=help_of(cls, name), **kwargs)


def flag(*decls: str, help: str) -> Any:
    """A boolean option, shown without a `<bool>` after it: a flag takes no value."""
    return typer.Option(*decls, help=help, metavar="")


Data = Annotated[Optional[Path], typer.Option("--data", help=f"{help_of(DataConfig, 'data')} Default: $HERLEV_DATA, "
                                                            "else ./data/herlev.")]
RunOption = Annotated[Optional[Path], typer.Option("--run", help="Run folder (holds herlev.json). Default: the newest "
                                                                 "finished run under ./runs (or $HERLEV_RUNS).")]
Arch = Annotated[str, option(ModelConfig, "arch")]
Head = Annotated[str, option(ModelConfig, "head")]
Task = Annotated[str, option(DataConfig, "task")]
Classes = Annotated[Optional[Path], option(DataConfig, "classes", "--classes")]
Pretrained = Annotated[bool, flag("--pretrained/--no-pretrained", help=help_of(ModelConfig, "pretrained"))]
Weights = Annotated[Optional[Path], option(ModelConfig, "weights")]
Folds = Annotated[int, option(DataConfig, "folds")]
Size = Annotated[int, option(DataConfig, "size")]
Bs = Annotated[int, option(DataConfig, "bs")]
Seed = Annotated[int, option(DataConfig, "seed")]
Device = Annotated[str, option(TrainConfig, "device")]
SkipBad = Annotated[bool, flag("--skip-bad", help=help_of(DataConfig, "skip_bad"))]
Quiet = Annotated[bool, flag("--quiet", "-q", help=help_of(TrainConfig, "quiet"))]
MseWeight = Annotated[float, option(ModelConfig, "mse_weight")]
MseWarmup = Annotated[float, option(TrainConfig, "mse_warmup")]
LabelSmoothing = Annotated[float, option(TrainConfig, "label_smoothing")]
Ema = Annotated[float, option(TrainConfig, "ema")]
Mixup = Annotated[float, option(TrainConfig, "mixup")]
Cutmix = Annotated[float, option(TrainConfig, "cutmix")]
Epochs = Annotated[int, option(TrainConfig, "epochs")]
Lr = Annotated[str, option(TrainConfig, "lr")]
Wd = Annotated[float, option(TrainConfig, "wd")]
Keep = Annotated[str, option(TrainConfig, "keep")]
Augment = Annotated[str, option(DataConfig, "augment")]
Policy = Annotated[str, option(DataConfig, "policy")]
Balance = Annotated[bool, flag("--balance", help=help_of(DataConfig, "balance"))]
ValSplit = Annotated[float, option(TrainConfig, "val_split")]
Workers = Annotated[Optional[int], option(DataConfig, "workers")]
Threshold = Annotated[Optional[str], option(InferenceSettings, "threshold")]
CheckpointEvery = Annotated[float, option(TrainConfig, "checkpoint_every")]
LR_DEFAULT = f"{TRAIN['lr']:g}"  # --lr is parsed from text ('auto' or a number)


def as_text(value: str) -> str:
    """An option's text as given: typer would turn an empty path into '.', the current folder."""
    return value


def out_folder(value: str | Path, option: str = "--out") -> Path:
    """An output folder option (parsed with `as_text`); an empty one is an error, never the current folder."""
    if isinstance(value, str) and not value.strip():
        raise HerlevError(f"{option} is empty: name the output folder (. for the current one)")
    return Path(value)


def bars(quiet: bool) -> bool:
    """Show training's progress: unless asked to be quiet. The library picks bars and the epoch table on a terminal,
    one plain line per epoch (elapsed, time left) when stdout is a log file or a pipe."""
    return not quiet


def parse_lr(value: str) -> float | None:
    """--lr: a number, or 'auto' (None: fastai's lr_find suggestion)."""
    if value == "auto":
        return None
    try:
        return float(value)
    except ValueError:
        raise HerlevError(f"--lr '{value}' is not a number or 'auto'") from None

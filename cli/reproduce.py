"""`herlev reproduce`: the paper's three heads on identical folds, printed beside the paper's numbers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from herlev_cli.app import (DATA, LR_DEFAULT, MODEL, TRAIN, Arch, Augment, Balance, Bs, CheckpointEvery, Data, Device,
                            Epochs, Folds, Keep, Lr, MseWarmup, MseWeight, Policy, Pretrained, Quiet, Seed, Size, Task,
                            ValSplit, Wd, Weights, Workers, app, bars, data_dir, out,
                            parse_lr, user_errors)
from herlev_fa.config import (PAPER_HEADS, POSTER_ARCH, POSTER_EPOCHS, POSTER_POLICY, DataConfig, ModelConfig,
                              TrainConfig)

if TYPE_CHECKING:
    from herlev_fa.reproduction import ReproduceResult


def _table(result: ReproduceResult) -> Table:
    """Rows: metrics; per head our mean ± std over folds, then the paper's number."""
    from herlev_fa.metrics import SCALAR_METRICS
    from herlev_fa.reproduction import COLUMNS, ours_cell, paper_cell

    n_folds = len(next(iter(result.runs.values())))
    table = Table(title=f"{n_folds}-fold cross-validation: ours (mean ± std) vs the paper (4-fold)")
    table.add_column("metric")
    for head in result.summary:
        table.add_column(head, justify="right", no_wrap=True)
        table.add_column("paper", justify="right", style="dim", no_wrap=True)
    for metric in SCALAR_METRICS:
        cells = [c for head, s in result.summary.items()
                 for c in (ours_cell(metric, s[metric]), paper_cell(head, metric))]
        table.add_row(COLUMNS[metric], *cells)
    return table


@app.command(rich_help_panel="Training")
@user_errors
def reproduce(
    data: Data = None,
    arch: Arch = POSTER_ARCH,
    task: Task = DATA["task"],
    folds: Folds = DATA["folds"],
    epochs: Epochs = POSTER_EPOCHS,
    size: Size = DATA["size"],
    bs: Bs = DATA["bs"],
    augment: Augment = DATA["augment"],
    policy: Policy = POSTER_POLICY,
    balance: Balance = DATA["balance"],
    workers: Workers = None,
    pretrained: Pretrained = MODEL["pretrained"],
    weights: Weights = None,
    mse_weight: MseWeight = MODEL["mse_weight"],
    mse_warmup: MseWarmup = TRAIN["mse_warmup"],
    lr: Lr = LR_DEFAULT,
    wd: Wd = TRAIN["wd"],
    keep: Keep = TRAIN["keep"],
    val_split: ValSplit = TRAIN["val_split"],
    heads: Annotated[Optional[list[str]], typer.Option("--head", "--heads", help="Heads to train, repeated or "
                                                                     "comma-separated (--heads cls,cls_reg,corn); "
                                                                     f"default: {', '.join(PAPER_HEADS)}.")] = None,
    seed: Seed = DATA["seed"],
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: runs/reproduce-ARCH); "
                                                                  "rerun the same command to resume it.")] = None,
    device: Device = TRAIN["device"],
    checkpoint_every: CheckpointEvery = TRAIN["checkpoint_every"],
    quiet: Quiet = TRAIN["quiet"],
) -> None:
    """Train cls, reg and cls_reg (or the --head ones) on identical folds and compare with the paper's table (resumable)."""  # noqa: E501
    from herlev_fa.reproduction import ReproduceConfig
    from herlev_fa.reproduction import reproduce as reproduce_heads

    cfg = ReproduceConfig(TrainConfig(
        DataConfig(data_dir(data), task=task, size=size, folds=folds, seed=seed, bs=bs, augment=augment, policy=policy,
                   balance=balance, workers=workers),
        ModelConfig(arch, pretrained=pretrained, weights=weights, mse_weight=mse_weight),
        epochs=epochs, lr=parse_lr(lr), wd=wd, keep=keep, val_split=val_split, mse_warmup=mse_warmup, device=device,
        quiet=not bars(quiet), checkpoint_every=checkpoint_every,
    ), heads=tuple(h for v in heads for h in v.split(",")) if heads else PAPER_HEADS, out=out_dir)
    result = reproduce_heads(cfg, log=None if quiet else out.print)
    out.print(_table(result))
    reused = sum(len(r) for r in result.runs.values()) - len(result.trained)
    out.print(f"trained {len(result.trained)} fold run(s), reused {reused} finished before")
    out.print(f"results: [bold]{result.files['results_md']}[/], {result.files['results_csv'].name}, "
              f"{result.files['comparison_png'].name}; pooled figures in {result.root}/<head>/")

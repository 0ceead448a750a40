"""`herlev predict`: class, probabilities and severity score of unlabelled images, as a CSV (and a table)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from herlev_cli.app import (PREDICT, RunOption, SkipBad, Threshold, app, flag, model_line, option, out, run_dir,
                            user_errors)
from herlev_fa.config import PredictSettings, help_of
from herlev_fa.atomic import atomic_path, records_json
from herlev_fa.errors import HerlevError

if TYPE_CHECKING:
    import pandas as pd

TABLE_MAX = 20  # print a table for at most this many images


def _table(preds: "pd.DataFrame", run: Path, tta: bool) -> Table:
    from herlev_fa.data.items import printable

    table = Table(title=f"{run.name}{' (TTA x8)' if tta else ''}")
    for name in ("image", "pred", "p(pred)", "score", "P(abnormal)", "screening"):
        table.add_column(name, justify="left" if name in ("image", "pred", "screening") else "right",
                         overflow="fold")
    for _, row in preds.iterrows():
        p_pred = f"{row[f'p_{row.pred}']:.3f}" if f"p_{row.pred}" in row else "-"
        p_abnormal = f"{row.abnormal_prob:.3f}" if "abnormal_prob" in row else "-"
        table.add_row(printable(Path(row.path).name), row.pred, p_pred, f"{row.score:.2f}", p_abnormal,
                      "abnormal" if row.abnormal else "normal")
    return table


@app.command(rich_help_panel="Inference")
@user_errors
def predict(
    images: Annotated[list[Path], typer.Argument(metavar="IMAGE|DIR",
                                                 help="Image files, or folders searched recursively (masks skipped).")],
    run: RunOption = None,
    out_file: Annotated[Path, typer.Option("--out", help="CSV to write (replaced if it exists).")] = Path("preds.csv"),
    tta: Annotated[bool, flag("--tta", help=help_of(PredictSettings, "tta"))] = PREDICT["tta"],
    bs: Annotated[int, option(PredictSettings, "bs")] = PREDICT["bs"],
    device: Annotated[str, option(PredictSettings, "device")] = PREDICT["device"],
    skip_bad: SkipBad = PREDICT["skip_bad"],
    threshold: Threshold = None,
    calibrated: Annotated[bool, flag("--calibrated",
                                     help=help_of(PredictSettings, "calibrated"))] = PREDICT["calibrated"],
    as_json: Annotated[bool, flag("--json", help="Print the predictions as JSON records on stdout.")] = False,
) -> None:
    """Predict the class, class probabilities and severity score of images; writes a CSV, one row per image."""
    if out_file.is_dir():  # before any work
        raise HerlevError(f"--out '{out_file}' is a folder; give a file name, e.g. '{out_file / 'preds.csv'}'")
    from herlev_fa.prediction import predict as predict_images
    from herlev_fa.data.items import FILE_NAME_ERRORS

    settings = PredictSettings(tta=tta, bs=bs, device=device, skip_bad=skip_bad, threshold=threshold,
                               calibrated=calibrated, progress=not as_json)
    run = run_dir(run)
    preds = predict_images(run, images, settings)
    with atomic_path(out_file) as tmp:
        preds.to_csv(tmp, index=False, errors=FILE_NAME_ERRORS)
    if as_json:
        typer.echo(records_json(preds))
        return
    if len(preds) <= TABLE_MAX:
        out.print(_table(preds, run, tta))
    n_abnormal = int(preds["abnormal"].sum())
    rule = "score" if "abnormal_prob" not in preds else "P(abnormal)"
    named = f" ({threshold})" if threshold and not threshold[0].isdigit() else ""
    out.print(f"{len(preds)} image(s), {n_abnormal} called abnormal ({rule} ≥ {preds.attrs['threshold']:.3g}{named}); "
              f"written to [bold]{out_file}[/]")
    out.print(model_line(run), highlight=False)

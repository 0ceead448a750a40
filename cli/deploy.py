"""`herlev export` (ONNX for deployment) and `herlev calibrate` (temperature scaling): what follows training."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from herlev_cli.app import app, out, user_errors


@app.command(rich_help_panel="Inference")
@user_errors
def export(
    run: Annotated[Path, typer.Argument(help="Run folder (or a cross-validated run's folder: the ensemble).")],
    format: Annotated[str, typer.Option("--format", help="onnx (needs: pip install \"herlev_fa[onnx]\").")] = "onnx",
    out_file: Annotated[Optional[Path], typer.Option("--out", help="File to write (default: RUN/model.onnx).")] = None,
    check: Annotated[Optional[list[Path]], typer.Option(help="Image files to check the exported model on (default: up "
                                                             "to 16 of the run's held-out cells).")] = None,
) -> None:
    """Export a run's model for deployment (ONNX), checked against the run with onnxruntime on real cells."""
    from herlev_fa.errors import HerlevError
    from herlev_fa.export import FORMATS, export_onnx

    if format not in FORMATS:
        raise HerlevError(f"unknown --format '{format}': choose {', '.join(FORMATS)}")
    result = export_onnx(run, out=out_file, images=check)
    out.print(f"written [bold]{result.path}[/]: input 'image' [B, 3, S, S] (herlev_fa.preprocess), output 'output' "
              f"(the run's raw output); onnxruntime agrees with the run on {result.source} "
              f"(max |difference| {result.max_difference:.1e})", highlight=False)


@app.command(rich_help_panel="Inference")
@user_errors
def calibrate(
    run: Annotated[Path, typer.Argument(help="Fold run folder (holds herlev.json and its held-out predictions).")],
) -> None:
    """Fit a temperature to the run's probabilities on its held-out fold; ECE before and after (cross-fitted)."""
    from herlev_fa.calibration import calibrate as fit

    result = fit(run)
    out.print(f"temperature {result.temperature:.3f} on {result.n} held-out cells: ECE {result.ece_before:.3f} -> "
              f"{result.ece_after:.3f} (each half scaled by the temperature fitted on the other), NLL "
              f"{result.nll_before:.3f} -> {result.nll_after:.3f}", highlight=False)
    out.print(f"written {result.files[0]} and {result.files[1].name}; use it: herlev predict ... --run {run} "
              "--calibrated", highlight=False)

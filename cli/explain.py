"""The `explain` and `quantify` commands: Integrated Gradients of a run's model, per image and over a dataset.

Registered on the shared `app` when imported (``herlev_cli.main`` imports this module).
Each command parses its options and calls one library function of ``herlev_fa.explain.report``.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer

from herlev_cli.app import Bs, Device, Quiet, app, err, out, user_errors
from herlev_fa.explain.attribution import BASELINES, DEFAULT_BASELINE, DEFAULT_TOL

RunOpt = Annotated[Path, typer.Option("--run", help="Run folder (holds herlev.json).")]
Target = Annotated[str, typer.Option(help="predicted | score | a class name: the logit (or severity score) explained.")]
Steps = Annotated[int, typer.Option(help="Gauss-Legendre steps of the IG path integral.")]
Baseline = Annotated[str, typer.Option(help=f"{' | '.join(BASELINES)}: the input IG starts from "
                                            "(mean = zero after normalisation; see docs/explainability.md).")]
Tol = Annotated[float, typer.Option(help="Warn when |delta| exceeds this fraction of f(x) - f(baseline).")]
Precision = Annotated[str, typer.Option(help="fp32 | bf16 (autocast: faster on GPUs, larger delta).")]


@contextlib.contextmanager
def _warnings_as_lines():
    """Print the library's warnings (e.g. IG not converged) as one yellow line each."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", UserWarning)
        yield
    for w in caught:
        if issubclass(w.category, UserWarning):
            err.print(f"[bold yellow]warning:[/] {w.message}", highlight=False, soft_wrap=True)


@app.command(rich_help_panel="Explanation")
@user_errors
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files (bmp, jpg, png, tif; RGB, RGBA or grayscale).")],
    run: RunOpt,
    target: Target = "predicted",
    steps: Steps = 50,
    baseline: Baseline = DEFAULT_BASELINE,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: RUN/explain).")] = None,
    device: Device = "auto",
    bs: Bs = 8,
    precision: Precision = "fp32",
    tol: Tol = DEFAULT_TOL,
    quiet: Quiet = False,
) -> None:
    """Integrated Gradients per image: NAME_ig.png (cell, heat map, overlay) and NAME_ig.npy (H x W)."""
    from herlev_fa.explain.report import explain_images

    with _warnings_as_lines():
        table, folder = explain_images(run, images, out=out_dir, target=target, steps=steps, baseline=baseline,
                                       device=device, bs=bs, precision=precision, tol=tol, progress=not quiet)
    for r in table.itertuples(index=False):
        out.print(f"{r.name}: predicted [bold]{r.predicted}[/], score {r.score:.2f}, IG of {r.target}, "
                  f"delta {r.delta:+.2g} ({r.relative_delta:.1%})", highlight=False)
    out.print(f"written to [bold]{folder}[/] (NAME_ig.png, NAME_ig.npy, explanations.csv)")


@app.command(rich_help_panel="Explanation")
@user_errors
def quantify(
    run: RunOpt,
    data: Annotated[Optional[Path], typer.Option(help="Dataset root (default: the one the run was trained on).")] = None,
    split: Annotated[str, typer.Option(help="valid (the run's held-out fold) | all (every image with a mask).")] = "valid",
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: RUN/quantify-SPLIT).")] = None,
    target: Target = "predicted",
    steps: Steps = 50,
    baseline: Baseline = DEFAULT_BASELINE,
    device: Device = "auto",
    bs: Bs = 8,
    precision: Precision = "fp32",
    tol: Tol = DEFAULT_TOL,
    quiet: Quiet = False,
) -> None:
    """Share of IG attribution on nucleus, cytoplasm and background of each masked image, per class."""
    from herlev_fa.explain.report import quantify as run_quantify
    from herlev_fa.explain.report import summary_table

    with _warnings_as_lines():
        result = run_quantify(run, data=data, split=split, out=out_dir, target=target, steps=steps, baseline=baseline,
                              device=device, bs=bs, precision=precision, tol=tol, progress=not quiet)
    out.print(summary_table(result.summary, f"IG on mask regions ({split}, baseline {baseline}, {steps} steps)"))
    if result.skipped:
        out.print(f"{result.skipped} image(s) without a mask skipped")
    out.print(f"written to [bold]{result.out_dir}[/] (quantify.csv, quantify.md, quantify.png)")

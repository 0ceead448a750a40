"""The `explain`, `quantify`, `compare-explanations` and `compare-quantify` commands: IG of runs' models.

Registered on the shared `app` when imported (``herlev_cli.main`` imports this module).
Each command parses its options into an `IGSettings` (which holds every default and help text)
and calls one library function of ``herlev_fa.explanation.report`` (or ``.study``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from herlev_cli.app import Quiet, RunOption, app, flag, model_line, out, run_dir, user_errors
from herlev_fa.config import IGSettings

DEFAULT = IGSettings()
Target = Annotated[str, typer.Option(help=IGSettings.help("target"))]
Steps = Annotated[int, typer.Option(help=IGSettings.help("steps"))]
Method = Annotated[str, typer.Option(help=IGSettings.help("method"))]
Baseline = Annotated[str, typer.Option(help=IGSettings.help("baseline"))]
Tol = Annotated[float, typer.Option(help=IGSettings.help("tol"))]
Precision = Annotated[str, typer.Option(help=IGSettings.help("precision"))]
ImagesPerCall = Annotated[int, typer.Option("--bs", help=IGSettings.help("bs"))]
Device = Annotated[str, typer.Option(help=IGSettings.help("device"))]
DataRoot = Annotated[Optional[Path], typer.Option("--data", help="Dataset root (default: the run's own data root).")]
QuantifyOut = Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: RUN/quantify-SPLIT).")]
Split = Annotated[str, typer.Option(help="valid (the run's held-out fold) | all (every image with a mask).")]
AsJson = Annotated[bool, flag("--json", help="Print the per-image rows as JSON on stdout (implies --quiet).")]


@app.command(rich_help_panel="Explanation")
@user_errors
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files (bmp, jpg, png, tif; RGB, RGBA or grayscale).")],
    run: RunOption = None,
    target: Target = DEFAULT.target,
    steps: Steps = DEFAULT.steps,
    method: Method = DEFAULT.method,
    baseline: Baseline = DEFAULT.baseline,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: RUN/explain).")] = None,
    device: Device = DEFAULT.device,
    bs: ImagesPerCall = DEFAULT.bs,
    precision: Precision = DEFAULT.precision,
    tol: Tol = DEFAULT.tol,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Integrated Gradients per image: NAME_ig.png (cell, heat map, overlay) and NAME_ig.npy (H x W)."""
    from herlev_fa.data.items import printable
    from herlev_fa.explanation.report import delta_summary, explain_images

    settings = IGSettings(target=target, steps=steps, method=method, baseline=baseline, precision=precision, tol=tol,
                          bs=bs, device=device)
    run = run_dir(run)
    table, folder = explain_images(run, images, out=out_dir, settings=settings,
                                   progress=not (quiet or as_json))
    if as_json:
        typer.echo(table.to_json(orient="records"))
        return
    for r in table.itertuples(index=False):
        out.print(f"{printable(r.name)}: predicted [bold]{r.predicted}[/], score {r.score:.2f}, IG of {r.target}, "
                  f"delta {r.delta:+.2g} ({r.relative_delta:.1%})", highlight=False)
    out.print(delta_summary(table["delta"], table["relative_delta"], tol, table["precision"]), highlight=False)
    out.print(f"written to [bold]{folder}[/] (NAME_ig.png, NAME_ig.npy, explanations.csv)")
    out.print(model_line(run), highlight=False)


@app.command(rich_help_panel="Explanation")
@user_errors
def quantify(
    run: RunOption = None,
    data: DataRoot = None,
    split: Split = "valid",
    out_dir: QuantifyOut = None,
    target: Target = DEFAULT.target,
    steps: Steps = DEFAULT.steps,
    method: Method = DEFAULT.method,
    baseline: Baseline = DEFAULT.baseline,
    device: Device = DEFAULT.device,
    bs: ImagesPerCall = DEFAULT.bs,
    precision: Precision = DEFAULT.precision,
    tol: Tol = DEFAULT.tol,
    limit: Annotated[Optional[int], typer.Option(help="Explain a random sample of this many cells (seeded by --seed) "
                                                      "instead of all.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --limit sample (same seed, same cells).")] = 0,
    resume: Annotated[bool, flag("--resume", help="Finish a stopped quantify in --out: explain only the cells it has "
                                                  "no row for yet (same options).")] = False,
    quiet: Quiet = False,
    as_json: AsJson = False,
) -> None:
    """Share of IG attribution on nucleus, cytoplasm and background of each masked image, per class.

    Rows are written as they are computed (quantify.partial.csv): a stopped run keeps them, and
    --resume finishes it.
    """
    from herlev_fa.explanation.report import precisions_used, summary_table
    from herlev_fa.explanation.report import quantify as run_quantify

    settings = IGSettings(target=target, steps=steps, method=method, baseline=baseline, precision=precision, tol=tol,
                          bs=bs, device=device)
    run = run_dir(run)
    result = run_quantify(run, data=data, split=split, out=out_dir, settings=settings,
                          progress=not (quiet or as_json), limit=limit, seed=seed, resume=resume)
    if as_json:
        typer.echo(result.table.to_json(orient="records"))
        return
    out.print(summary_table(result.summary, f"IG on mask regions ({split}, "
                                            f"{settings.describe(precisions_used(result.table['precision']))})"))
    out.print(result.delta, highlight=False)
    out.print(f"written to [bold]{result.out_dir}[/] (quantify.csv, quantify.md, quantify.png)")
    out.print(model_line(run), highlight=False)


@app.command("compare-explanations", rich_help_panel="Explanation")
@user_errors
def compare_explanations(
    runs: Annotated[list[Path], typer.Argument(help="Run folders, one column each (e.g. the cls, reg and cls_reg "
                                                    "runs of the same fold).")],
    out_file: Annotated[Path, typer.Option("--out", help="The PNG to write (its rows also go to the same name .csv).")]
    = Path("figure7.png"),
    per_class: Annotated[int, typer.Option(help="Cells per class, drawn from the runs' common held-out fold.")] = 2,
    seed: Annotated[int, typer.Option(help="Seed of the cell draw (same seed, same cells).")] = 0,
    label: Annotated[Optional[list[str]], typer.Option(help="Column title per run, in order (default: the shortest "
                                                            "distinct ends of the run paths).")] = None,
    data: DataRoot = None,
    target: Target = DEFAULT.target,
    steps: Steps = DEFAULT.steps,
    method: Method = DEFAULT.method,
    baseline: Baseline = DEFAULT.baseline,
    device: Device = DEFAULT.device,
    precision: Precision = DEFAULT.precision,
    tol: Tol = DEFAULT.tol,
    dpi: Annotated[int, typer.Option(help="Resolution of the PNG (dots per inch; 2 inches a panel).")] = 200,
) -> None:
    """The poster's Fig. 7: the same held-out cells (rows) explained by each run (columns), nucleus outlined."""
    from herlev_fa.explanation.report import compare_explanations as draw
    from herlev_fa.explanation.report import precisions_used

    settings = IGSettings(target=target, steps=steps, method=method, baseline=baseline, precision=precision, tol=tol,
                          device=device)
    result = draw(runs, out_file, per_class=per_class, seed=seed, labels=label, data=data, settings=settings, dpi=dpi)
    cells = result.table["cell"].nunique()
    out.print(f"{cells} cells x {len(runs)} runs written to [bold]{result.figure}[/] "
              f"(and {result.figure.with_suffix('.csv').name})")
    out.print(f"IG delta: relative delta median {result.table['relative_delta'].median():.2%}, "
              f"max {result.table['relative_delta'].max():.1%}; "
              f"gradients in {precisions_used(result.table['precision'])}", highlight=False)


@app.command("compare-quantify", rich_help_panel="Explanation")
@user_errors
def compare_quantify(
    runs: Annotated[list[Path], typer.Argument(help="Run folders: fold runs, or cross-validated runs (fold*/ inside, "
                                                    "each fold on its own held-out cells). The first is the reference.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: study.md, study.png (Fig. 8), and one "
                                                        "quantify folder per run and fold.")] = Path("compare-quantify"),
    label: Annotated[Optional[list[str]], typer.Option(help="Name per run, in order (default: the shortest distinct "
                                                            "ends of the run paths).")] = None,
    data: DataRoot = None,
    target: Target = DEFAULT.target,
    steps: Steps = DEFAULT.steps,
    method: Method = DEFAULT.method,
    baseline: Baseline = DEFAULT.baseline,
    device: Device = DEFAULT.device,
    bs: ImagesPerCall = DEFAULT.bs,
    precision: Precision = DEFAULT.precision,
    tol: Tol = DEFAULT.tol,
    quiet: Quiet = False,
) -> None:
    """The poster's Fig. 8: where each run's IG falls (nucleus share, enrichment) on the same held-out cells,
    per class, with paired tests against the first run."""
    from rich.table import Table

    import pandas as pd

    from herlev_fa.explanation.report import delta_summary, precisions_used
    from herlev_fa.explanation.study import compare_quantify as study

    settings = IGSettings(target=target, steps=steps, method=method, baseline=baseline, precision=precision, tol=tol,
                          bs=bs, device=device)
    result = study(runs, out_dir, labels=label, data=data, settings=settings, progress=not quiet,
                   log=None if quiet else lambda line: out.print(line, highlight=False))
    reference = next(iter(result.tables))
    used = precisions_used(pd.concat(result.tables.values())["precision"])
    table = Table(title=f"nucleus on the held-out cells ({settings.describe(used)}); medians, paired against {reference}")
    for column in ("run", "cells", "+ share", "area share", "enrichment", "control", "share − " + reference,
                   "r [95% CI]", "p"):
        table.add_column(column, justify="left" if column == "run" else "right")
    versus = result.versus.set_index(["name", "metric"]) if len(result.versus) else None
    for name, t in result.tables.items():
        medians = [f"{t[m].median():.2f}" for m in ("nucleus_pos_share", "nucleus_area_share", "nucleus_enrichment",
                                                   "nucleus_change_enrichment")]
        row = None if versus is None or name == reference else versus.loc[(name, "nucleus_pos_share")]
        paired = ["", "", ""] if row is None else [
            f"{row['median_diff']:+.3f} [{row['median_diff_low']:+.3f}, {row['median_diff_high']:+.3f}]",
            f"{row['r']:+.2f} [{row['r_low']:+.2f}, {row['r_high']:+.2f}]", f"{row['p']:.2g}"]
        table.add_row(name, str(len(t)), *medians, *paired)
    out.print(table)
    if len(result.tables) > 1:
        out.print("share − run: median paired difference [95% CI]; r: rank-biserial effect size of the paired test "
                  "(−1..1) [95% CI]: a tiny p with r and the difference near 0 is a negligible difference",
                  highlight=False)
    for name, t in result.tables.items():
        out.print(f"{name}: " + delta_summary(t["delta"], t["relative_delta"], tol, t["precision"]), highlight=False)
    out.print(f"written to [bold]{result.report.parent}[/] (study.md, study.png, one quantify folder per run and fold)")

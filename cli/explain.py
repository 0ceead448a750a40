"""The attribution commands: `explain`, `quantify`, `compare-explanations`, `compare-quantify`, `sanity` and
`faithfulness`.

Registered on the shared `app` when imported (``herlev_cli.main`` imports this module).
Each command takes the attribution options once, through `attribution_options` (which adds the
`IGSettings` fields as options, with the defaults and help texts held there, and hands the
command one `settings` object), and calls one library function of ``herlev_fa.explanation``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from herlev_cli.app import Quiet, RunOption, app, flag, model_line, out, run_dir, user_errors
from herlev_fa.atomic import records_json
from herlev_fa.config import IGSettings, help_of
from herlev_fa.errors import HerlevError

# the IGSettings fields that are options of the attribution commands, and their types on the command line
SETTING_TYPES: dict[str, Any] = {"method": str, "target": str, "steps": int, "rule": str, "baseline": str,
                                 "samples": int, "noise": float, "window": Optional[int], "device": str, "bs": int,
                                 "precision": str, "tol": float}


def attribution_options(*skip: str) -> Callable[[Callable], Callable]:
    """Add the `IGSettings` fields of `SETTING_TYPES` (but `skip`) as options of a command, with their defaults and
    help from `IGSettings`; the command gets them as one `settings: IGSettings` keyword argument."""
    names = [n for n in SETTING_TYPES if n not in skip]
    defaults = {f.name: f.default for f in dataclasses.fields(IGSettings)}

    def decorate(command: Callable) -> Callable:
        signature = inspect.signature(command, eval_str=True)
        own = [p for p in signature.parameters.values() if p.name != "settings"]
        added = [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=defaults[n],
                                   annotation=Annotated[SETTING_TYPES[n], typer.Option(help=help_of(IGSettings, n))])
                 for n in names]

        @functools.wraps(command)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            settings = IGSettings(**{n: kwargs.pop(n) for n in names})
            return command(*args, settings=settings, **kwargs)

        wrapper.__signature__ = signature.replace(parameters=[*own, *added])  # what Typer reads
        wrapper.__annotations__ = {p.name: p.annotation for p in (*own, *added)}
        return wrapper

    return decorate


DataRoot = Annotated[Optional[Path], typer.Option("--data", help="Dataset root (default: the run's own data root).")]
QuantifyOut = Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: RUN/quantify-SPLIT).")]
Split = Annotated[str, typer.Option(help="valid (the run's held-out fold) | all (every image with a mask).")]
AsJson = Annotated[bool, flag("--json", help="Print the per-image rows as JSON on stdout (implies --quiet).")]
Limit = Annotated[int, typer.Option(help="Cells to use, spread evenly over the split's cells in path order (0: all).")]


@app.command(rich_help_panel="Explanation")
@user_errors
@attribution_options()
def explain(
    images: Annotated[list[Path], typer.Argument(help="Image files (bmp, jpg, png, tif; RGB, RGBA or grayscale).")],
    run: RunOption = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: RUN/explain).")] = None,
    quiet: Quiet = False,
    as_json: AsJson = False,
    settings: IGSettings = IGSettings(),
) -> None:
    """Attribution per image (IG by default): NAME_METHOD.png (cell, heat map, overlay) and NAME_METHOD.npy (H x W)."""
    from herlev_fa.data.items import printable
    from herlev_fa.explanation.report import delta_summary, explain_images

    run = run_dir(run)
    table, folder = explain_images(run, images, out=out_dir, settings=settings,
                                   progress=not (quiet or as_json))
    if as_json:
        typer.echo(records_json(table))
        return
    for r in table.itertuples(index=False):
        delta = f", delta {r.delta:+.2g} ({r.relative_delta:.1%})" if settings.method == "ig" else ""
        out.print(f"{printable(r.name)}: predicted [bold]{r.predicted}[/], score {r.score:.2f}, {settings.method} of "
                  f"{r.target}{delta}", highlight=False)
    out.print(delta_summary(table["delta"], table["relative_delta"], settings.tol, table["precision"]),
              highlight=False)
    m = settings.method
    out.print(f"written to [bold]{folder}[/] (NAME_{m}.png, NAME_{m}.npy, explanations.csv)")
    out.print(model_line(run), highlight=False)


@app.command(rich_help_panel="Explanation")
@user_errors
@attribution_options()
def quantify(
    run: RunOption = None,
    data: DataRoot = None,
    split: Split = "valid",
    out_dir: QuantifyOut = None,
    limit: Annotated[Optional[int], typer.Option(help="Explain a random sample of this many cells (seeded by --seed) "
                                                      "instead of all.")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --limit sample (same seed, same cells).")] = 0,
    resume: Annotated[bool, flag("--resume", help="Finish a stopped quantify in --out: explain only the cells it has "
                                                  "no row for yet (same options).")] = False,
    quiet: Quiet = False,
    as_json: AsJson = False,
    settings: IGSettings = IGSettings(),
) -> None:
    """Share of the attribution on nucleus, cytoplasm and background of each masked image, per class; localisation
    metrics and the other-cell control.

    Rows are written as they are computed (quantify.partial.csv): a stopped run keeps them, and
    --resume finishes it.
    """
    from herlev_fa.explanation.report import precisions_used, summary_table
    from herlev_fa.explanation.report import quantify as run_quantify

    run = run_dir(run)
    result = run_quantify(run, data=data, split=split, out=out_dir, settings=settings,
                          progress=not (quiet or as_json), limit=limit, seed=seed, resume=resume)
    if as_json:
        typer.echo(records_json(result.table))
        return
    out.print(summary_table(result.summary, f"{settings.method} on mask regions ({split}, "
                                            f"{settings.describe(precisions_used(result.table['precision']))})"))
    out.print(result.delta, highlight=False)
    out.print(f"written to [bold]{result.out_dir}[/] (quantify.csv, quantify.md, quantify.png)")
    out.print(model_line(run), highlight=False)


@app.command("compare-explanations", rich_help_panel="Explanation")
@user_errors
@attribution_options("bs")
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
    dpi: Annotated[int, typer.Option(help="Resolution of the PNG (dots per inch; 2 inches a panel).")] = 200,
    settings: IGSettings = IGSettings(),
) -> None:
    """The poster's Fig. 7: the same held-out cells (rows) explained by each run (columns), nucleus outlined."""
    for path in (out_file, out_file.with_suffix(".csv")):  # before any work
        if path.is_dir():
            raise HerlevError(f"--out names the figure file to write, and '{path}' is an existing folder; give a file "
                              f"name, e.g. '{out_file / 'figure7.png'}'")
    from herlev_fa.explanation.report import compare_explanations as draw
    from herlev_fa.explanation.report import precisions_used

    result = draw(runs, out_file, per_class=per_class, seed=seed, labels=label, data=data, settings=settings, dpi=dpi)
    cells = result.table["cell"].nunique()
    out.print(f"{cells} cells x {len(runs)} runs written to [bold]{result.figure}[/] "
              f"(and {result.figure.with_suffix('.csv').name})")
    delta = (f"IG delta: relative delta median {result.table['relative_delta'].median():.2%}, "
             f"max {result.table['relative_delta'].max():.1%}; " if settings.method == "ig" else "")
    out.print(f"{delta}gradients in {precisions_used(result.table['precision'])}", highlight=False)


@app.command("compare-quantify", rich_help_panel="Explanation")
@user_errors
@attribution_options()
def compare_quantify(
    runs: Annotated[list[Path], typer.Argument(help="Run folders: fold runs, or cross-validated runs (fold*/ inside, "
                                                    "each fold on its own held-out cells). "
                                                    "The first is the reference.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder: study.md, study.png (Fig. 8), and one "
                                                        "quantify folder per run and "
                                                        "fold.")] = Path("compare-quantify"),
    label: Annotated[Optional[list[str]], typer.Option(help="Name per run, in order (default: the shortest distinct "
                                                            "ends of the run paths).")] = None,
    data: DataRoot = None,
    quiet: Quiet = False,
    settings: IGSettings = IGSettings(),
) -> None:
    """The poster's Fig. 8: where each run's attribution falls (nucleus share, enrichment) on the same held-out cells,
    per class, with paired tests against the first run."""
    from rich.table import Table

    import pandas as pd

    from herlev_fa.explanation.report import delta_summary, precisions_used
    from herlev_fa.explanation.study import compare_quantify as study

    result = study(runs, out_dir, labels=label, data=data, settings=settings, progress=not quiet,
                   log=None if quiet else lambda line: out.print(line, highlight=False))
    reference = next(iter(result.tables))
    used = precisions_used(pd.concat(result.tables.values())["precision"])
    table = Table(title=f"nucleus on the held-out cells ({settings.describe(used)}); "
                        f"medians, paired against {reference}")
    for column in ("run", "cells", "+ share", "area share", "enrichment", "control", "other cell",
                   "share − " + reference, "r [95% CI]", "p"):
        table.add_column(column, justify="left" if column == "run" else "right")
    versus = result.versus.set_index(["name", "metric"]) if len(result.versus) else None
    for name, t in result.tables.items():
        medians = [f"{t[m].median():.2f}" for m in ("nucleus_pos_share", "nucleus_area_share", "nucleus_enrichment",
                                                   "nucleus_change_enrichment", "nucleus_enrichment_other")]
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
        out.print(f"{name}: " + delta_summary(t["delta"], t["relative_delta"], settings.tol, t["precision"]),
                  highlight=False)
    out.print(f"written to [bold]{result.report.parent}[/] (study.md, study.png, one quantify folder per run and fold)")


AllMethods = Annotated[bool, flag("--all-methods", help="Every attribution method, one after another (overrides "
                                                        "--method).")]


def methods_of(settings: IGSettings, all_methods: bool) -> list[str]:
    from herlev_fa.config import ATTRIBUTION_METHODS

    return list(ATTRIBUTION_METHODS) if all_methods else [settings.method]


@app.command(rich_help_panel="Explanation")
@user_errors
@attribution_options()
def sanity(
    run: RunOption = None,
    data: DataRoot = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: RUN/sanity).")] = None,
    split: Split = "valid",
    limit: Limit = 16,
    all_methods: AllMethods = False,
    quiet: Quiet = False,
    settings: IGSettings = IGSettings(),
) -> None:
    """Cascading model-parameter randomisation (Adebayo et al. 2018): each method's maps as the network is
    re-initialised from the top, against the trained model's (Spearman, SSIM, nucleus enrichment)."""
    from herlev_fa.explanation.sanity import sanity as run_sanity

    run = run_dir(run)
    result = run_sanity(run, methods_of(settings, all_methods), out=out_dir, settings=settings, data=data,
                        limit=limit, split=split, log=None if quiet else lambda line: out.print(line, highlight=False))
    out.print(result.files[1].read_text(), highlight=False)
    out.print(f"written to [bold]{result.files[0].parent}[/] (sanity.csv, sanity.md, sanity.png)")


@app.command(rich_help_panel="Explanation")
@user_errors
@attribution_options()
def faithfulness(
    run: RunOption = None,
    data: DataRoot = None,
    out_dir: Annotated[Optional[Path], typer.Option("--out", help="Output folder (default: RUN/faithfulness).")]
    = None,
    split: Split = "valid",
    limit: Limit = 32,
    all_methods: AllMethods = False,
    quiet: Quiet = False,
    settings: IGSettings = IGSettings(),
) -> None:
    """Deletion and insertion curves (pixels removed most-relevant-first, least-relevant-first, at random and
    nucleus-first, imputed from their neighbours as in ROAD) and their areas, per method."""
    from herlev_fa.explanation.faithfulness import faithfulness as run_faithfulness

    run = run_dir(run)
    result = run_faithfulness(run, methods_of(settings, all_methods), out=out_dir, settings=settings, data=data,
                              limit=limit, split=split,
                              log=None if quiet else lambda line: out.print(line, highlight=False))
    out.print(result.files[2].read_text(), highlight=False)
    out.print(f"written to [bold]{result.files[0].parent}[/] (faithfulness.csv, curves.csv, faithfulness.md, "
              "faithfulness.png)")

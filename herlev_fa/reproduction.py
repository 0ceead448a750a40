"""Reproduce the paper's comparison: the three heads on identical folds, beside the published numbers.

Pirovano, Almeida, Ladjal, *Regression Constraint for an Explainable Cervical Cancer Classifier*
(2019) compare a classifier (`cls`), a regressor (`reg`) and a classifier with a regression
constraint (`cls_reg`) in 4-fold cross-validation on Herlev. `reproduce` trains each head on every
fold with one shared configuration (same split, schedule and seed; images decoded once), then
writes, under OUT:

| path | what |
|---|---|
| `reproduce.json` | the settings, written first; a rerun with other settings is refused |
| `<head>/fold<k>/` | an ordinary run folder (`herlev_fa.runs`, with `predictions.csv` of its held-out fold) |
| `<head>/confusion_matrix.png`, `score_distribution.png`, `pooled_metrics.json` | predictions pooled over folds |
| `results.csv` | one row per head and fold: every scalar metric (as in each fold's `metrics.json`) |
| `results.md` | mean ± std per head beside the paper's numbers (`PAPER`) |
| `comparison.png` | bar chart: ours (mean ± std over folds) vs the paper, per metric and head |

It resumes: a fold run that finished (has `herlev.json`, with this reproduction's settings) is
kept; a fold folder without `herlev.json` (interrupted) continues from its last completed epoch
when it has a checkpoint (``herlev_fa.training.checkpoint``), and is removed and trained again otherwise.

What it is not: a new training loop. Every fold run comes from `herlev_fa.training.loop.train_fold`.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from herlev_fa.training import checkpoint
from herlev_fa.atomic import atomic_path, check_output_folder, write_json, write_text
from herlev_fa.config import PAPER_HEADS, TrainConfig, resolve_device
from herlev_fa.errors import HerlevError
from herlev_fa.labels import Task
from herlev_fa.metrics import SCALAR_METRICS, decode, severity_metrics
from herlev_fa.model.heads import get_head, head_names
from herlev_fa.model.network import build_model
from herlev_fa.figures import comparison_png, confusion_matrix_png, score_distribution_png
from herlev_fa.runs import RunRecord, selection, versions
from herlev_fa.runs import PREDICTIONS
from herlev_fa.training.loop import Prepared, fold_warnings, prepare, resolve_task, summarize, train_fold

FORMAT = "herlev_fa.reproduce/1"

# Pirovano et al. (2019): 4-fold cross-validation on Herlev, 5 severity classes; in this tool's
# units (accuracies as fractions). None: not reported.
PAPER: dict[str, dict[str, float | None]] = {
    "cls": {"accuracy": 0.676, "binary_accuracy": 0.903, "auc": 0.90, "mse": None, "kappa": None},
    "reg": {"accuracy": 0.582, "binary_accuracy": 0.893, "auc": None, "mse": 0.71, "kappa": None},
    "cls_reg": {"accuracy": 0.726, "binary_accuracy": 0.95, "auc": 0.94, "mse": 0.59, "kappa": None},
}
PAPER_NAMES = {"cls": "Cls", "reg": "Reg", "cls_reg": "Cls+Reg"}

# column titles, in table order; accuracies are shown in percent, as in the paper
COLUMNS = {"accuracy": "accuracy (%)", "binary_accuracy": "binary accuracy (%)", "auc": "AUC-ROC",
           "mse": "MSE", "kappa": "quadratic kappa", "big_mistakes": "2+ levels off (%)",
           "normal_cis": "normal↔CIS (cells)", "normal_severe": "normal↔severe (cells)",
           "screening_accuracy": "screening accuracy (%)", "sensitivity": "sensitivity (%)",
           "specificity": "specificity (%)", "sens_at_spec95": "sens. at 95% spec. (%)",
           "spec_at_sens95": "spec. at 95% sens. (%)", "ece": "ECE"}
PERCENT = ("accuracy", "binary_accuracy", "big_mistakes", "screening_accuracy", "sensitivity", "specificity",
           "sens_at_spec95", "spec_at_sens95")
NOT_REPORTED = "–"

@dataclass(frozen=True)
class ReproduceConfig:
    """One reproduction: the training config every head shares, the heads, the output folder."""

    train: TrainConfig  # shared by every head (data, arch, weights, schedule, seed); head, fold, out, name ignored
    heads: tuple[str, ...] = PAPER_HEADS  # the pipelines to compare (registered head names), each on every fold
    out: Path | None = None  # output folder; None = <train.out>/reproduce-<arch>

    def __post_init__(self) -> None:
        object.__setattr__(self, "heads", tuple(self.heads))
        if self.out is not None:
            object.__setattr__(self, "out", Path(self.out))
            check_output_folder(self.out, "--out")
        known = head_names()
        bad = [h for h in self.heads if h not in known]
        if not self.heads or bad or len(set(self.heads)) != len(self.heads):
            raise HerlevError(f"heads {list(self.heads)} are not a list of distinct heads among {', '.join(known)}")

    @property
    def root(self) -> Path:
        return self.out if self.out is not None else self.train.out / f"reproduce-{self.train.model.arch}"


@dataclass
class ReproduceResult:
    """What `reproduce` produced; every dict is keyed by head, lists are in fold order."""

    root: Path
    runs: dict[str, list[Path]]
    metrics: dict[str, list[dict]]  # each fold run's metrics.json
    summary: dict[str, dict]  # `herlev_fa.training.loop.summarize` of each head: metric -> mean, std, folds
    pooled: dict[str, dict]  # metrics of the predictions pooled over folds
    trained: list[Path] = field(default_factory=list)  # fold runs trained by this call (the others were reused)
    files: dict[str, Path] = field(default_factory=dict)  # results_csv, results_md, comparison_png


def paper_cell(head: str, metric: str) -> str:
    """The paper's number as shown beside ours ('–' when not reported)."""
    value = PAPER.get(head, {}).get(metric)
    return NOT_REPORTED if value is None else _number(metric, value)


def ours_cell(metric: str, stats: dict) -> str:
    """'mean ± std' of one metric over folds, in the table's unit."""
    return f"{_number(metric, stats['mean'])} ± {_number(metric, stats['std'])}"


def _number(metric: str, value: float) -> str:
    return f"{100 * value:.1f}" if metric in PERCENT else f"{value:.2f}"




def _absolute(cfg: TrainConfig) -> TrainConfig:
    """`cfg` with absolute paths, so that the stored settings do not depend on the working folder."""

    def absolute(p: Path | None) -> Path | None:
        return None if p is None else Path(p).expanduser().resolve()

    return replace(cfg, data=replace(cfg.data, data=absolute(cfg.data.data), classes=absolute(cfg.data.classes)),
                   model=replace(cfg.model, weights=absolute(cfg.model.weights)))


def fold_config(base: TrainConfig, head: str, fold: int, root: Path) -> TrainConfig:
    """The training config of one head and fold: `base` with only the head and fold changed."""
    return replace(base, model=replace(base.model, head=head), fold=fold, out=root / head, name=f"fold{fold}")


def _check_root(root: Path, settings: dict) -> bool:
    """Refuse an output folder holding anything but this reproduction. True when it was started before."""
    if root.exists() and not root.is_dir():
        raise HerlevError(f"output folder '{root}' is a file; pass another --out")
    claim = root / "reproduce.json"
    if claim.is_file():
        try:
            stored = json.loads(claim.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HerlevError(f"'{claim}' is not valid JSON ({e}); pass another --out") from None
        if not isinstance(stored, dict) or stored.get("format") != FORMAT:
            raise HerlevError(f"'{claim}' is not a reproduction record of this version; pass another --out")
        diff = checkpoint.differences(checkpoint.backfill(stored.get("settings") or {}), settings)
        if diff:
            raise HerlevError(f"'{root}' holds a reproduction made with other settings ({diff}); rerun with its "
                              "settings to resume it, or pass another --out")
        return True
    if root.is_dir() and any(root.iterdir()):
        raise HerlevError(f"output folder '{root}' is not empty and holds no reproduce.json; pass another --out")
    return False


def _fold_status(run_dir: Path, cfg: TrainConfig, head: str, fold: int) -> str:
    """'new', 'interrupted' (a folder without herlev.json) or 'finished'.

    Raises:
        HerlevError: a finished run in the folder was trained with other settings, or is damaged.
    """
    if not run_dir.exists():
        return "new"
    if not (run_dir / "herlev.json").is_file():
        return "interrupted"
    record = RunRecord.read(run_dir)
    same = checkpoint.settings(record.config) == checkpoint.settings(cfg.to_json())
    if record.head != head or record.fold != fold or not same:
        raise HerlevError(f"fold run '{run_dir}' was not trained with this reproduction's settings; delete it to "
                          "train it again, or pass another --out")
    for name in ("metrics.json", PREDICTIONS):
        if not (run_dir / name).is_file():
            raise HerlevError(f"fold run '{run_dir}' has no {name}; the run folder is damaged: "
                              "delete it to train it again")
    return "finished"


def _check_split(run_dir: Path, data: Prepared) -> None:
    folds = pd.read_csv(run_dir / "folds.csv", dtype={"rel": str, "label": str, "fold": "int64"})
    ours = data.items[["rel", "label", "fold"]].astype({"fold": "int64"}).reset_index(drop=True)
    if not folds.equals(ours):
        raise HerlevError(f"fold run '{run_dir}' was split over other images than the data folder holds now "
                          "(the data set changed?); pass another --out to start a new reproduction")


def _read_predictions(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    frame = pd.read_csv(run_dir / PREDICTIONS)
    cols = [c for c in frame.columns if c.startswith("out_")]
    return frame[cols].to_numpy(np.float32), frame["y"].to_numpy(np.int64)


def _results_markdown(cfg: TrainConfig, heads: Sequence[str], summary: dict[str, dict], n_images: int,
                      warnings_: Sequence[str] = ()) -> str:
    d, m = cfg.data, cfg.model
    start = f"weights {m.weights.name}" if m.weights else "ImageNet weights" if m.pretrained else "random init"
    task = d.task if d.classes is None else d.classes.name
    header = ["head"] + [c for metric in SCALAR_METRICS for c in (COLUMNS[metric], "paper")]
    lines = [
        f"# Reproduction: {m.arch}, {d.folds}-fold cross-validation",
        "",
        f"Data `{d.data}` (task {task}, {n_images} images), {d.size} px, {cfg.epochs} epochs, batch {d.bs}, "
        f"lr {cfg.lr if cfg.lr is not None else 'auto'}, weight decay {cfg.wd}, {start}, λ (mse weight) {m.mse_weight}"
        f"{f' ramped in over {cfg.mse_warmup:.0%} of training' if cfg.mse_warmup else ''}, "
        f"{d.policy} augmentation, seed {d.seed}; weights kept: {selection(cfg.to_json())}.",
        "",
        "Ours: mean ± std over folds (std with ddof 0). Paper: Pirovano et al. (2019), 4-fold "
        f"cross-validation on Herlev; {NOT_REPORTED}: not reported.",
        "",
    ]
    lines += [f"**Warning**: {w}." for w in warnings_] + ([""] if warnings_ else [])
    lines += [
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for head in heads:
        cells = [head] + [c for metric in SCALAR_METRICS
                          for c in (ours_cell(metric, summary[head][metric]), paper_cell(head, metric))]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Per fold: `results.csv`. Chart: `comparison.png`. Pooled over folds, per head: "
              "`<head>/confusion_matrix.png`, `<head>/score_distribution.png`, `<head>/pooled_metrics.json`."]
    return "\n".join(lines) + "\n"


def reproduce(cfg: ReproduceConfig, log: Callable[[str], None] | None = None) -> ReproduceResult:
    """Train every head of `cfg.heads` on every fold, then write the comparison with the paper.

    Images are decoded once; each fold run is `herlev_fa.training.loop.train_fold` with the shared
    config, only the head and held-out fold changing. Finished fold runs of an earlier call
    are reused; interrupted ones resume from their checkpoint, or are trained again without one.
    `log` receives one line per fold run (trained / reused).

    Raises:
        HerlevError: a problem a user can fix (data, options, weights), or an output folder
            holding another reproduction or anything else.
    """
    say = log or (lambda message: None)
    base = _absolute(cfg.train)
    root = cfg.root
    device = resolve_device(base.device)
    task = resolve_task(base)
    settings = checkpoint.settings(base.to_json())
    started_before = _check_root(root, {**settings, "heads": list(cfg.heads)})
    folds = range(base.data.folds)
    plan = {(h, k): _fold_status(root / h / f"fold{k}", fold_config(base, h, k, root), h, k)
            for h in cfg.heads for k in folds}
    todo_heads = sorted({h for (h, _), status in plan.items() if status != "finished"}, key=cfg.heads.index)
    for head in todo_heads:  # fail fast on weights or head/task problems, before any output or decoding
        build_model(replace(base.model, head=head), task)
    data = prepare(base, task) if todo_heads else None  # bad images fail here, before any output
    if not started_before:
        write_json(root / "reproduce.json", {"format": FORMAT, "settings": {**settings, "heads": list(cfg.heads)},
                                             "started": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": versions()})

    runs: dict[str, list[Path]] = {h: [] for h in cfg.heads}
    metrics: dict[str, list[dict]] = {h: [] for h in cfg.heads}
    outputs: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {h: [] for h in cfg.heads}
    trained: list[Path] = []
    for i, (head, fold) in enumerate(plan, start=1):
        run_dir, status = root / head / f"fold{fold}", plan[(head, fold)]
        if status == "finished":
            if data is not None:
                _check_split(run_dir, data)
            say(f"{head} fold {fold} ({i}/{len(plan)}): finished before, reused")
        else:
            fold_cfg = fold_config(base, head, fold, root)
            resume = status == "interrupted" and checkpoint.find(run_dir) is not None
            if resume:
                say(f"{head} fold {fold} ({i}/{len(plan)}): resuming from its checkpoint (interrupted)")
                fold_cfg = replace(fold_cfg, resume=True)
            else:
                if status == "interrupted":  # killed before its first checkpoint: nothing to keep
                    shutil.rmtree(run_dir)
                again = " again (interrupted)" if status == "interrupted" else ""
                say(f"{head} fold {fold} ({i}/{len(plan)}): training{again}")
            train_fold(fold_cfg, data, fold, run_dir, device)
            trained.append(run_dir)
        outputs[head].append(_read_predictions(run_dir))
        metrics[head].append(json.loads((run_dir / "metrics.json").read_text(encoding="utf-8")))
        runs[head].append(run_dir)

    summary = {h: summarize(metrics[h]) for h in cfg.heads}
    notes = [w for h in cfg.heads for w in fold_warnings([f"{h} {r.name}" for r in runs[h]], metrics[h], task.classes)]
    for note in notes:
        say(f"warning: {note}")
    pooled = {h: _write_pooled(root / h, h, outputs[h], task) for h in cfg.heads}
    files = _write_results(root, base, cfg.heads, runs, metrics, summary, notes)
    return ReproduceResult(root, runs, metrics, summary, pooled, trained, files)


def _write_pooled(head_dir: Path, head: str, outputs: list[tuple[np.ndarray, np.ndarray]], task: Task) -> dict:
    """Metrics and figures of the held-out predictions of every fold together."""
    out = np.concatenate([o for o, _ in outputs])  # [N, C] over every fold
    y = np.concatenate([t for _, t in outputs])  # [N]
    pooled = severity_metrics(out, y, get_head(head), task.severities)
    write_json(head_dir / "pooled_metrics.json", {**pooled, "classes": list(task.classes), "folds": len(outputs)})
    title = f"{head}, {len(outputs)} folds pooled"
    confusion_matrix_png(np.array(pooled["confusion_matrix"]), task.classes, head_dir / "confusion_matrix.png",
                         title=f"{title}: accuracy {pooled['accuracy']:.3f}, n={pooled['n']}")
    _, score, _ = decode(out, get_head(head), task.severities)
    score_distribution_png(score, y, task.classes, task.severities, head_dir / "score_distribution.png",
                           title=f"{title}: predicted severity per true class")
    return pooled


def _write_results(root: Path, cfg: TrainConfig, heads: Sequence[str], runs: dict[str, list[Path]],
                   metrics: dict[str, list[dict]], summary: dict[str, dict],
                   notes: Sequence[str] = ()) -> dict[str, Path]:
    rows: list[dict[str, Any]] = []
    for head in heads:
        for run_dir, m in zip(runs[head], metrics[head]):
            rows.append({"head": head, "fold": m.get("fold"), "run": run_dir.relative_to(root).as_posix(),
                         **{k: m.get(k, np.nan) for k in SCALAR_METRICS}, "n": m.get("n"),
                         "best_epoch": m.get("best_epoch")})
    files = {"results_csv": root / "results.csv", "results_md": root / "results.md",
             "comparison_png": root / "comparison.png"}
    with atomic_path(files["results_csv"]) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)
    n_images = sum(int(m.get("n", 0)) for m in metrics[heads[0]])  # the held-out folds cover every image once
    write_text(files["results_md"], _results_markdown(cfg, heads, summary, n_images, notes))
    names = [k for k in SCALAR_METRICS if any(k in reported for reported in PAPER.values())]  # the paper's panels
    mean = np.array([[summary[h][k]["mean"] for k in names] for h in heads])  # [H, M]
    std = np.array([[summary[h][k]["std"] for k in names] for h in heads])  # [H, M]
    paper = np.array([[np.nan if PAPER.get(h, {}).get(k) is None else PAPER[h][k] for k in names] for h in heads])
    comparison_png([PAPER_NAMES.get(h, h) for h in heads], [COLUMNS.get(k, k) for k in names], mean, std, paper,
                   files["comparison_png"], scales=[100.0 if k in PERCENT else 1.0 for k in names],
                   capped=[k != "mse" for k in names],
                   title=f"{cfg.model.arch}, {cfg.data.folds}-fold CV: ours (mean ± std) vs Pirovano et al. (4-fold)")
    return files

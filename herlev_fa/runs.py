"""The run folder: what a training run leaves behind, and loading it back without pickle.

A run folder holds:

| file                | what                                                                    |
|---------------------|-------------------------------------------------------------------------|
| `model.safetensors` | weights of the timm network (loads into `timm.create_model(arch, num_classes=n)`) |
| `config.json`       | timm's config (architecture, num_classes, pretrained_cfg with mean/std, label names) |
| `herlev.json`       | this tool's sidecar: task, classes, severities, head, size, normalisation, fold, metrics, versions, hashes of the weights and classes |
| `folds.csv`         | every image of the dataset (path relative to the data root), its class and fold |
| `log.csv`           | one row per epoch                                                        |
| `metrics.json`      | final metrics on the held-out fold                                       |
| `predictions.csv`   | per held-out image: rel, label, fold, y, pred, score, raw outputs out_0.. |
| `*.png`             | confusion matrix, score distribution, training curves                    |

Every file is written atomically; `herlev.json` is written last, so a folder without it is an
incomplete run (interrupted) and is refused.
"""  # noqa: E501 (markdown table rows)

from __future__ import annotations

import hashlib
import json
import math
import warnings
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import pandas as pd
from torch import nn

from herlev_fa.atomic import atomic_path, write_json
from herlev_fa.data.items import FILE_NAME_ERRORS
from herlev_fa.ensemble import FoldEnsemble, describe, fold_folders
from herlev_fa.errors import HerlevError, missing
from herlev_fa.labels import Task, task_problem
from herlev_fa.model.heads import Head, SeverityModel, get_head, head_names

FORMAT = "herlev_fa.run/1"
PREDICTIONS = "predictions.csv"
SHARED = ("head", "task", "image_size", "mean", "std")  # what every fold run of an ensemble must agree on


@dataclass(frozen=True)
class RunRecord:
    """A run folder's `herlev.json`: written once, last, by training (`to_json`), validated on reading (`read`).

    The fields without a default are required of every run folder (their JSON types are checked,
    then their values, `meta_problem`); the others were added over versions, and a record
    without them reads with the default.
    """

    format: str
    arch: str
    head: str  # a name of `heads.HEADS`; `Run.head` is the resolved `Head`
    task: dict[str, Any]  # `Task.to_json`
    image_size: int
    mean: list[float]
    std: list[float]
    fold: int
    n_folds: int
    data_root: str
    folds_file: str = "folds.csv"
    mse_weight: float | None = None
    seed: int | None = None
    lr: float | None = None
    best_epoch: int | None = None
    kept: str | None = None  # `selection`, in words
    skipped_images: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)  # the held-out fold's scalar metrics
    train_seconds: float | None = None  # of the last session, if resumed
    device: str | None = None
    processes: int = 1  # data-parallel processes: the effective batch is bs x processes
    versions: dict[str, str] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)  # `TrainConfig.to_json`
    integrity: dict[str, str] | None = None  # `integrity`; None in folders older than the hashes

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def read(cls, run_dir: str | Path) -> RunRecord:
        """The validated `herlev.json` of a run folder.

        Raises:
            HerlevError: not a run folder, an incomplete one, or a malformed sidecar.
        """
        run_dir = Path(run_dir)
        if run_dir.exists() and not run_dir.is_dir():
            raise HerlevError(f"run '{run_dir}' is a file, not a run folder: pass the folder that holds herlev.json")
        if not run_dir.is_dir():
            raise HerlevError(missing(run_dir, "run folder"))
        path = run_dir / "herlev.json"
        if not path.is_file():
            hint = " (it holds fold*/ runs: pass one of them)" if any(run_dir.glob("fold*/herlev.json")) else \
                " (the run did not finish, or this is not a run folder)"
            raise HerlevError(f"'{run_dir}' has no herlev.json{hint}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HerlevError(f"'{path}' is not valid JSON ({e}); the run folder is damaged") from None
        if not isinstance(data, dict):
            raise HerlevError(f"'{path}' must hold a JSON object; the run folder is damaged")
        kinds = {"str": str, "int": int, "list[float]": list, "dict[str, Any]": dict}
        for f in dataclasses.fields(cls):
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                continue
            kind = kinds[f.type]
            if f.name not in data:
                raise HerlevError(f"'{path}' lacks '{f.name}'; the run folder is damaged or from another tool")
            if not isinstance(data[f.name], kind) or isinstance(data[f.name], bool):
                raise HerlevError(f"'{path}': '{f.name}' should be {kind.__name__}, "
                                  f"found {type(data[f.name]).__name__}")
        if data["format"] != FORMAT:
            raise HerlevError(f"'{path}' has format '{data['format']}', this version reads '{FORMAT}'")
        problem = meta_problem(data)
        if problem:
            raise HerlevError(f"'{path}': {problem}; the run folder is damaged or was edited: restore it or retrain")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def selection(config: dict[str, Any]) -> str:
    """How a run's weights were chosen, from its training config (`herlev.json`'s `config`), in words.

    Runs saved before the inner validation split existed chose `best` on the held-out fold itself:
    they say so, since their held-out numbers are then optimistic.
    """
    if config.get("keep", "best") == "last":
        return "last epoch"
    if "val_split" not in config:
        return "best epoch on the held-out fold (an older run: optimistic)"
    return f"best epoch on an inner {config['val_split']:.0%} split of the training folds"


def versions() -> dict[str, str]:
    """Versions of the packages that shape a run's numbers."""
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("herlev_fa", "torch", "timm", "fastai", "albumentations", "numpy"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "unknown"
    return out


def save_model(run_dir: Path, model: SeverityModel, task: Task, size: int, mean, std) -> None:
    """Write `model.safetensors` + timm's `config.json` for the run's network."""
    from safetensors.torch import save_file

    net = model.net
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    n_bytes = sum(v.numel() * v.element_size() for v in state.values())
    with atomic_path(run_dir / "model.safetensors", size=n_bytes) as tmp:
        save_file(state, str(tmp), metadata={"format": "pt"})
    pretrained_cfg = {k: v for k, v in dict(net.pretrained_cfg).items()
                      if isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
    pretrained_cfg.update(input_size=[3, size, size], mean=list(mean), std=list(std),
                          num_classes=model.head.n_outputs(task.n_classes))
    write_json(run_dir / "config.json", {
        "architecture": pretrained_cfg.get("architecture") or type(net).__name__.lower(),
        "num_classes": model.head.n_outputs(task.n_classes),
        "num_features": int(getattr(net, "num_features", 0)),
        "pretrained_cfg": pretrained_cfg,
        "label_names": model.head.output_names(task.classes),
    })


def save_folds(run_dir: Path, items: pd.DataFrame, folds) -> None:
    frame = pd.DataFrame({"rel": items["rel"], "label": items["label"], "fold": folds})
    with atomic_path(run_dir / "folds.csv") as tmp:
        frame.to_csv(tmp, index=False, errors=FILE_NAME_ERRORS)


def save_predictions(run_dir: Path, held: pd.DataFrame, fold: int, out, y, head: Head, severities) -> None:
    """The held-out predictions: one row per image of `held` (rel, label), raw outputs [N, C] as out_i."""
    from herlev_fa.metrics import decode

    _, score, pred = decode(out, head, severities)
    frame = pd.DataFrame({"rel": held["rel"].to_numpy(), "label": held["label"].to_numpy(), "fold": fold, "y": y,
                          "pred": pred, "score": score})
    frame = pd.concat([frame, pd.DataFrame(out, columns=[f"out_{i}" for i in range(out.shape[1])])], axis=1)
    with atomic_path(run_dir / PREDICTIONS) as tmp:
        frame.to_csv(tmp, index=False, errors=FILE_NAME_ERRORS)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def classes_sha256(task: dict[str, Any]) -> str:
    """The hash of a task's class list and severities, in their order (a task's JSON form, `Task.to_json`)."""
    canonical = json.dumps([list(map(str, task["classes"])), [float(v) for v in task["severities"]]])
    return hashlib.sha256(canonical.encode()).hexdigest()


def integrity(run_dir: Path, task: Task) -> dict[str, str]:
    """What `herlev.json` records at save time so that a later edit of the weights or the classes is caught."""
    return {"weights_sha256": file_sha256(run_dir / "model.safetensors"),
            "classes_sha256": classes_sha256(task.to_json())}


def integrity_problem(run_dir: Path, record: RunRecord) -> str | None:
    """Which recorded hash the run's weights or class list no longer match, or None.

    A run folder written before the hashes were recorded has none: it loads, with a warning that
    edits to it cannot be detected.
    """
    recorded = record.integrity
    if recorded is None:
        warnings.warn(f"run '{run_dir}' records no hashes of its weights and classes (written by an older version): "
                      "edits to them cannot be detected; retrain to add them", stacklevel=3)
        return None
    if not isinstance(recorded, dict) or not all(isinstance(recorded.get(k), str)
                                                 for k in ("weights_sha256", "classes_sha256")):
        return "herlev.json: its 'integrity' hashes are malformed"
    if file_sha256(run_dir / "model.safetensors") != recorded["weights_sha256"]:
        return "model.safetensors is not the file this run saved (its sha256 differs from herlev.json's)"
    if classes_sha256(record.task) != recorded["classes_sha256"]:
        return "herlev.json's classes or severities are not those the run was trained with (their hash differs)"
    return None


@dataclass
class Run:
    """A loaded run: one fold's run folder, or a cross-validated folder as the ensemble of its fold runs.

    `record` is the run's `herlev.json` (an ensemble's: its first member's, which the others agree
    with on head, task, size and normalisation), `head` the resolved `Head`, `model` the network
    in eval mode on the CPU (for an ensemble a `FoldEnsemble` of the members'), `members` the fold
    runs in fold order (empty for a single run).
    """

    path: Path
    record: RunRecord
    task: Task
    head: Head
    model: nn.Module
    members: tuple[Run, ...] = ()

    @property
    def size(self) -> int:
        return self.record.image_size

    @property
    def mean(self) -> tuple[float, ...]:
        return tuple(self.record.mean)

    @property
    def std(self) -> tuple[float, ...]:
        return tuple(self.record.std)

    @property
    def fold(self) -> int | None:
        """The held-out fold; None for an ensemble, whose every cell trained some of its members."""
        return None if self.members else self.record.fold

    @property
    def kept(self) -> str:
        """How the weights were chosen (`selection`)."""
        return selection(self.record.config)

    def describe(self) -> str:
        """How command output names the model."""
        return describe(len(self.members)) if self.members else "one model"

    def screening_threshold(self, value: float | str | None) -> float:
        """A --threshold for this run: a number, None (0.5), or an operating point (`spec95`, `sens95`) that
        training's evaluation on the held-out fold recorded in the run's metrics.json.

        Raises:
            HerlevError: not a number, or an operating point the run has not recorded.
        """
        from herlev_fa.metrics import OPERATING_POINTS, threshold_value

        recorded = None
        if isinstance(value, str) and value.strip().lower() in OPERATING_POINTS:
            path = self.path / "metrics.json"
            try:
                recorded = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
            except (OSError, ValueError):
                recorded = None
        return threshold_value(value, recorded, source=f"run '{self.path}'")

    def folds(self) -> pd.DataFrame:
        """The run's folds file: rel, label, fold for every image it was split over (an ensemble's members share it)."""
        if self.members:
            return self.members[0].folds()
        path = self.path / self.record.folds_file
        if not path.is_file():
            raise HerlevError(f"run '{self.path}' has no folds file '{path.name}'; the run folder is incomplete")
        try:
            frame = pd.read_csv(path, dtype={"rel": str, "label": str}, encoding_errors=FILE_NAME_ERRORS)
        except (ValueError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
            raise HerlevError(f"'{path}' is not a folds table ({str(e).splitlines()[0]}); the run folder is damaged: "
                              "restore it or retrain") from None
        problem = folds_problem(frame, self.task.classes, self.record.n_folds)
        if problem:
            raise HerlevError(f"'{path}': {problem}; the run folder is damaged or was edited: restore it or retrain")
        return frame.astype({"fold": int})


def folds_problem(frame: pd.DataFrame, classes: tuple[str, ...], n_folds: int) -> str | None:
    """What is wrong with a folds table (columns rel, label, fold), or None."""
    missing = {"rel", "label", "fold"} - set(frame.columns)
    if missing:
        return f"it lacks the column(s) {', '.join(sorted(missing))}"
    if frame.empty:
        return "it lists no image"
    folds = pd.to_numeric(frame["fold"], errors="coerce")
    if folds.isna().any() or not folds.between(0, n_folds - 1).all() or not (folds == folds.round()).all():
        return f"its fold column holds values other than 0..{n_folds - 1}"
    unknown = sorted(set(frame["label"].astype(str)) - set(classes))
    if unknown:
        return f"label(s) {', '.join(unknown[:3])} are not classes of the run ({', '.join(classes)})"
    outside = [rel for rel in frame["rel"].astype(str) if not inside_root(rel)]
    if outside:
        return (f"path '{outside[0]}' is not inside the data root (absolute, or climbing out with '..'); a run's "
                f"images are listed relative to its data root ({len(outside)} such path(s))")
    return None


def inside_root(rel: str) -> bool:
    """A folds.csv path names a file under the data root: relative, without '..' or an empty name."""
    pure = PurePosixPath(rel.replace("\\", "/"))
    return bool(rel) and not pure.is_absolute() and ".." not in pure.parts and not PureWindowsPath(rel).drive


def latest_run(root: str | Path) -> Path:
    """The most recently finished run folder under `root` (searched three levels down).

    Raises:
        HerlevError: no finished run there.
    """
    root = Path(root)
    found = [p.parent for depth in ("*", "*/*", "*/*/*") for p in root.glob(f"{depth}/herlev.json")]
    if not found:
        raise HerlevError(f"no finished run under '{root}': train one first, or pass the run folder")
    return max(found, key=lambda p: (p / "herlev.json").stat().st_mtime)


def _numbers(value: Any, n: int | None = None) -> bool:
    """A list of finite real numbers (of length n when given)."""
    return (isinstance(value, list) and (n is None or len(value) == n) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value))


def meta_problem(meta: dict[str, Any]) -> str | None:
    """What is physically wrong with a run's `herlev.json` values (types already checked), or None.

    A run folder is input like any other: a NaN mean, a zero std or an absurd image size would
    otherwise give wrong numbers silently, or try to allocate hundreds of gigabytes.
    """
    if meta["head"] not in head_names():
        return f"head '{meta['head']}' is not one this version knows ({', '.join(head_names())})"
    if not 16 <= meta["image_size"] <= 2048:
        return f"image_size {meta['image_size']} is out of range (16..2048)"
    if not _numbers(meta["mean"], 3) or not all(0 <= v <= 1 for v in meta["mean"]):
        return f"mean {meta['mean']} is not 3 finite numbers in 0..1"
    if not _numbers(meta["std"], 3) or not all(0 < v <= 1 for v in meta["std"]):
        return f"std {meta['std']} is not 3 finite numbers in (0, 1]"
    if not 2 <= meta["n_folds"] <= 20 or not 0 <= meta["fold"] < meta["n_folds"]:
        return f"fold {meta['fold']} of n_folds {meta['n_folds']} is out of range"
    folds_file = meta.get("folds_file", "folds.csv")
    if not isinstance(folds_file, str) or folds_file in ("", ".", "..") or Path(folds_file).name != folds_file:
        return f"folds_file {folds_file!r} is not a file name inside the run folder"
    task = meta["task"]
    classes, severities = task.get("classes"), task.get("severities")
    if not isinstance(classes, list) or not isinstance(severities, list):
        return f"task classes {classes} and severities {severities} are not lists"
    problem = task_problem(classes, severities)  # the rule a class map is checked by before training
    return f"task {problem}" if problem else None


def config_problem(config: Any, record: RunRecord, head: Head, task: Task) -> str | None:
    """Where the run's timm `config.json` contradicts its `herlev.json`, or None."""
    if not isinstance(config, dict):
        return "it does not hold a JSON object"
    want_outputs = head.n_outputs(task.n_classes)
    if config.get("num_classes") != want_outputs:
        return f"num_classes {config.get('num_classes')!r}, but herlev.json's head and classes need {want_outputs}"
    labels = head.output_names(task.classes)  # what the head names its outputs, as `save_model` wrote them
    if "label_names" in config and config["label_names"] != labels:
        return f"label_names {config['label_names']} differ from what herlev.json's head and classes give: {labels}"
    arch = config.get("architecture")
    if arch is not None and arch != record.arch:
        return f"architecture '{arch}' differs from herlev.json's '{record.arch}'"
    return None


def run_task(run_dir: str | Path) -> Task:
    """The task of a fold run, from its validated sidecar (no weights loaded)."""
    return Task.from_json(RunRecord.read(run_dir).task)


def load_run(run_dir: str | Path | Run) -> Run:
    """Open a run: a run folder, or the folder of a cross-validated run (`fold0/ .. foldK/`) as the
    ensemble of its fold runs. Sidecars are validated and weights read as safetensors (nothing is
    unpickled). A run already loaded is returned as it is, so that every function taking a run
    accepts either.

    Raises:
        HerlevError: incomplete or damaged run folder, weights that do not fit its config, or an
            ensemble with a fold missing, misplaced, broken, or disagreeing with the others.
    """
    if isinstance(run_dir, Run):
        return run_dir
    run_dir = Path(run_dir)
    folds = fold_folders(run_dir)
    return _load_ensemble(run_dir, folds) if folds else _load_single(run_dir)


def _load_single(run_dir: Path) -> Run:
    from herlev_fa.model.network import create_net, load_into, load_weights_file

    record = RunRecord.read(run_dir)
    task = Task.from_json(record.task)
    weights = run_dir / "model.safetensors"
    if not weights.is_file():
        raise HerlevError(f"run '{run_dir}' has no model.safetensors; the run folder is incomplete")
    head = get_head(record.head)
    config_path = run_dir / "config.json"
    if config_path.is_file():  # written with every run; older hand-made folders may lack it
        try:
            config = json.loads(config_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise HerlevError(f"'{config_path}' is not valid JSON ({e}); the run folder is damaged") from None
        problem = config_problem(config, record, head, task)
        if problem:
            raise HerlevError(f"'{config_path}': {problem}; the run folder is damaged or was edited: restore it or "
                              "retrain")
    state = load_weights_file(weights)
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(v.isfinite().all())]
    if bad:
        raise HerlevError(f"'{weights}' holds NaN or infinite weights ({len(bad)} tensor(s), e.g. '{bad[0]}'): the "
                          "training diverged or the file is damaged; retrain, e.g. with a smaller --lr")
    problem = integrity_problem(run_dir, record)
    if problem:
        raise HerlevError(f"run '{run_dir}': {problem}; the run folder was edited or damaged after training: restore "
                          "it or retrain")
    net = create_net(record.arch, head.n_outputs(task.n_classes), pretrained=False)
    load_into(net, state, str(weights), new_classifier=False)
    return Run(run_dir, record, task, head, SeverityModel(net, head, task.severities).eval())


def _load_ensemble(folder: Path, folds: list[Path]) -> Run:
    """Every fold run of a cross-validated folder (`folds`, by fold number) as one run."""
    members = []
    for path in folds:
        try:
            members.append(_load_single(path))
        except HerlevError as e:
            raise HerlevError(f"fold model '{path}' of the ensemble is broken: {e}") from None
    first = members[0]
    expected = [folder / f"fold{k}" for k in range(first.record.n_folds)]
    absent = [p for p in expected if p not in folds]
    beyond = [p for p in folds if p not in expected]
    if beyond:  # a fold number the runs' own n_folds has no place for (copied in, or renamed)
        also = f"; {', '.join(p.name for p in absent)} missing" if absent else ""
        raise HerlevError(f"'{beyond[0]}' is not a fold of this {len(expected)}-fold run (its folds are fold0 .. "
                          f"fold{len(expected) - 1}{also}); remove or rename it")
    for run, path in zip(members, folds):
        if f"fold{run.fold}" != path.name:
            raise HerlevError(f"fold model '{path}' holds the run of fold {run.fold} (its herlev.json): the folder was "
                              f"renamed; name it fold{run.fold}")
    if absent:
        raise HerlevError(f"fold model '{absent[0]}' of the ensemble is missing ({len(folds)} of "
                          f"{len(expected)} fold run folders found); finish it (herlev train --resume) or remove the "
                          "folder's other folds")
    for run in members[1:]:
        for key in SHARED:
            mine, theirs = getattr(run.record, key), getattr(first.record, key)
            if mine != theirs:
                raise HerlevError(f"fold model '{run.path}' has another {key} than '{first.path}' "
                                  f"({mine} vs {theirs}): they cannot be averaged")
    model = FoldEnsemble([r.model for r in members], first.head, first.task.severities).eval()
    return Run(folder, first.record, first.task, first.head, model, tuple(members))

"""Frozen configuration of a training run: data, model and schedule, one comment per field.

The CLI only parses options into these; library functions take them. Validation lives in
``__post_init__`` so that nonsense numbers fail early with one clear `HerlevError`.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herlev_fa.atomic import check_output_folder
from herlev_fa.errors import HerlevError, SettingError
from herlev_fa.labels import TASK_NAMES

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
KEEP = ("best", "last")
AUGMENTS = ("batch", "albumentations", "none")
POLICY_NAMES = ("poster", "cells")  # data.augment.POLICIES (which imports albumentations: configs stay light)
PAPER_HEADS = ("cls", "reg", "cls_reg")  # the paper's pipelines: what `herlev reproduce` trains by default
# the rest of the poster's protocol, `herlev reproduce`'s defaults where `herlev train`'s differ (docs/results.md)
POSTER_ARCH, POSTER_EPOCHS, POSTER_POLICY = "resnet101", 30, "poster"
SEED_MAX = 2**32 - 1  # NumPy's seeds are 32-bit
LR_MAX = 10.0  # above this a run diverges at once; no schedule in this tool needs more


def _check(ok: bool, message: str, value: Any = None, options: dict[str, str] | None = None) -> None:
    """Raise a `SettingError` unless `ok`: `message` names settings in braces, the value at `{value}`."""
    if not ok:
        raise SettingError(message, value, options)


def _opt(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:
    """A dataclass field with its help text: the CLI shows the text and the default held here."""
    return field(default=default, metadata={"help": help}, **kwargs)


def help_of(cls: type, name: str) -> str:
    """The help text of one field of a config dataclass (what the CLI shows for its option)."""
    return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)


def defaults(cls: type) -> dict[str, Any]:
    """Field name -> default value of a config dataclass (fields without a plain default left out)."""
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def check_device(device: str, numbered: bool = True) -> None:
    """Raises a SettingError unless `device` is one of DEVICES or, with `numbered`, a numbered GPU (`cuda:1`).

    Training takes no numbered GPU: accelerate sets each process's GPU from LOCAL_RANK
    (`training.distributed.process_group`); CUDA_VISIBLE_DEVICES chooses the GPUs it sees.
    """
    _check(device in DEVICES or (numbered and device.startswith("cuda:")),
           f"unknown device '{device}': choose one of {', '.join(DEVICES)}")


def check_name(name: str, option: str) -> None:
    """Raises HerlevError unless `name` is one plain folder name (no separator, not '.' or '..')."""
    _check(bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name,
           f"{option} '{name}' is not a plain folder name: use letters, digits, '-' or '_', without '/' or '..'")


LOGGERS = ("tensorboard", "wandb", "mlflow")  # experiment trackers `--log` accepts (each an optional extra)


@dataclass(frozen=True)
class DataConfig:
    data: Path = _opt(help="Dataset root: one folder per class, at most two levels down.")
    task: str = _opt("severity", help="severity (5 classes) | herlev7 (the 7 archive classes) | binary "
                                      "(normal/abnormal).")
    classes: Path | None = _opt(None, help="Class map (YAML/JSON): folder -> class and severity.")
    size: int = _opt(224, help="Images are letterboxed to SIZE x SIZE pixels (16..2048; the paper used 224).")
    folds: int = _opt(4, help="Number of stratified folds (2..20).")
    seed: int = _opt(42, help=f"Seed for folds, initialisation and augmentation (0..{SEED_MAX}).")
    bs: int = _opt(32, help="Batch size.")
    skip_bad: bool = _opt(False, help="Skip unreadable images with a warning instead of stopping.")
    augment: str = _opt("batch", help="Training augmentation: batch (whole batches on the training device, fast) | "
                                      "albumentations (per image on CPU workers) | none.")
    policy: str = _opt("cells", help="Random training augmentation: cells (dihedral, any rotation, zoom 0.8-1.25 "
                                     "moving the cell in the frame, lighting ±20%) | poster (dihedral, rotation ±15°, "
                                     "zoom 0.9-1.1, lighting ±10%).")
    balance: bool = _opt(False, help="Draw training batches with every class equally likely (class-balanced "
                                     "sampling), for folders where some classes are rare.")
    workers: int | None = _opt(None, help="DataLoader workers for --augment albumentations; default 0 on the CPU, "
                                          "up to 8 on CUDA.")

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        if self.classes is not None:
            object.__setattr__(self, "classes", Path(self.classes))
        _check(self.classes is not None or self.task in TASK_NAMES,
               f"unknown task '{self.task}': choose one of {', '.join(TASK_NAMES)}, or pass {{classes}} FILE")
        _check(16 <= self.size <= 2048, "{size} {value} is out of range: use 16..2048 pixels (the paper used 224)",
               self.size)
        _check(2 <= self.folds <= 20, "{folds} {value} is out of range: use 2..20", self.folds)
        _check(0 <= self.seed <= SEED_MAX, f"{{seed}} {{value}} is out of range: use 0..{SEED_MAX}", self.seed)
        _check(self.bs >= 2, "{bs} {value} is out of range: a batch needs at least 2 images (batch norm)", self.bs)
        _check(self.augment in AUGMENTS, f"unknown {{augment}} {{value}}: choose one of {', '.join(AUGMENTS)}",
               self.augment)
        _check(self.policy in POLICY_NAMES, f"unknown {{policy}} {{value}}: choose one of {', '.join(POLICY_NAMES)}",
               self.policy)
        _check(self.workers is None or self.workers >= 0, "{workers} {value} must be >= 0", self.workers)


@dataclass(frozen=True)
class ModelConfig:
    arch: str = _opt("resnet101d", help="Any timm architecture, e.g. resnet101d (ResNet-D: average-pool shortcuts), "
                                        "resnet101 (the paper's), test_resnet, convnext_tiny.")
    head: str = _opt("cls", help="cls (cross-entropy) | reg (MSE on severity) | cls_reg (CE + lambda*MSE) | "
                     "corn (CORN ordinal) | sord (SORD soft ordinal labels).")
    pretrained: bool = _opt(True, help="Start from ImageNet weights (timm hub download), as in the paper.")
    weights: Path | None = _opt(None, help="Local weights file (safetensors / state dict) for offline use.")
    mse_weight: float = _opt(1.0, help="Lambda: weight of the MSE term of cls_reg.")

    def __post_init__(self) -> None:
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))
        from herlev_fa.model.heads import Head, get_head  # imports torch: not at module level, configs stay light

        name = self.head.name if isinstance(self.head, Head) else self.head  # a Head is stored by its name
        object.__setattr__(self, "head", get_head(name).name)  # checked: a name of the registry
        _check(math.isfinite(self.mse_weight) and self.mse_weight >= 0,
               "{mse_weight} {value} is out of range: use a finite number >= 0", self.mse_weight)


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig = _opt(help="What to train on.")
    model: ModelConfig = _opt(default_factory=ModelConfig, help="What to train.")
    epochs: int = _opt(60, help="Training epochs (after one frozen epoch when fine-tuning pretrained weights).")
    lr: float | None = _opt(1e-3, help=f"Peak learning rate (0 < LR < {LR_MAX:g}), or 'auto' for fastai's lr_find "
                                       "suggestion.")
    wd: float = _opt(0.05, help="AdamW weight decay.")
    fold: int | None = _opt(0, help="Held-out fold number, or 'all' to cross-validate.")
    device: str = _opt("auto", help=f"{' | '.join(DEVICES)}.")
    out: Path = _opt(Path("runs"), help="Runs are written under this folder.")
    name: str | None = _opt(None, help="Run folder name under --out (default: time-arch-head).")
    quiet: bool = _opt(False, help="No progress: neither bars and the epoch table (on a terminal) nor one plain line "
                                   "per epoch (when the output is a log file).")
    resume: bool = _opt(False, help="Continue an interrupted run (--name, or the newest unfinished one under --out) "
                                    "from its last completed epoch.")
    deterministic: bool = _opt(False, help="GPU: deterministic kernels and no cuDNN autotuning (slower). CPU runs are "
                                           "always reproducible.")
    precision: str = _opt("auto", help="auto (bf16 on GPUs that support it, else fp32) | fp32 | bf16.")
    keep: str = _opt("last", help="Weights to evaluate and save: last (the final epoch) | best (the epoch with the "
                                  "lowest loss on an inner validation split of the training folds, see --val-split). "
                                  "The held-out fold is never used to choose.")
    val_split: float = _opt(0.15, help="--keep best: share of the training folds held aside (stratified, seeded) to "
                                       "choose the epoch on (0 < share < 1).")
    mse_warmup: float = _opt(0.0, help="cls_reg: ramp lambda up from 0 over this fraction of training (0: constant).")
    label_smoothing: float = _opt(0.0, help="cls, cls_reg: label smoothing of the cross-entropy (0: none; 0.1 is "
                                            "common): the true class's target is 1 - S + S/K.")
    ema: float = _opt(0.0, help="Keep an exponential moving average of the weights with this decay per batch (timm's "
                                "ModelEmaV3; 0: off, e.g. 0.995) and evaluate and save the average; with --keep last.")
    mixup: float = _opt(0.0, help="fastai's MixUp: blend each training image with another, and their losses, by a "
                                   "share drawn from Beta(A, A) (0: off; 0.4 is common).")
    cutmix: float = _opt(0.0, help="fastai's CutMix: paste a box of another training image, and blend the losses by "
                                    "its area, drawn from Beta(A, A) (0: off; 1.0 is common).")
    checkpoint_every: float = _opt(300.0, help="Seconds between checkpoints (0: every epoch); one is always written "
                                               "at the end of each phase.")
    log: str | None = _opt(None, help="Experiment tracking: tensorboard (RUN/tensorboard) | wandb (a W&B run per "
                                      "fold; WANDB_MODE=offline keeps it in RUN/wandb) | mlflow (an MLflow run per "
                                      "fold in MLFLOW_TRACKING_URI, else OUT/mlflow.db). Each needs its extra, e.g. "
                                      "pip install \"herlev_fa[wandb]\".")

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        check_output_folder(self.out, "--out")  # before any work, not after an epoch or lr_find
        _check(1 <= self.epochs <= 10_000, "{epochs} {value} is out of range: use 1..10000", self.epochs)
        _check(self.lr is None or (math.isfinite(self.lr) and 0 < self.lr < LR_MAX),
               f"{{lr}} {{value}} is out of range: use a number between 0 and {LR_MAX:g} (exclusive), or 'auto'",
               self.lr)
        _check(math.isfinite(self.wd) and self.wd >= 0, "{wd} {value} is out of range: use a finite number >= 0",
               self.wd)
        _check(self.fold is None or 0 <= self.fold < self.data.folds,
               f"{{fold}} {{value}} is out of range: use 0..{self.data.folds - 1} or 'all'", self.fold)
        check_device(self.device, numbered=False)
        _check(0 <= self.mse_warmup <= 1, "{mse_warmup} {value} is out of range: use a fraction 0..1", self.mse_warmup)
        _check(0 <= self.label_smoothing < 1,
               "{label_smoothing} {value} is out of range: use a share 0 <= S < 1 (0.1 is common)",
               self.label_smoothing)
        _check(0 <= self.ema < 1, "{ema} {value} is out of range: use a decay 0 <= D < 1 (0: off; e.g. 0.995)",
               self.ema)
        _check(self.ema == 0 or self.keep == "last", "{ema} averages the weights of the last epochs and keeps the "
                                                     "average: use it with {keep} last")
        for name, alpha in (("mixup", self.mixup), ("cutmix", self.cutmix)):
            _check(math.isfinite(alpha) and 0 <= alpha <= 100,
                   f"{{{name}}} {{value}} is out of range: use a Beta parameter 0 <= A <= 100 (0: off)", alpha)
        _check(not (self.mixup and self.cutmix), "{mixup} and {cutmix} are two ways of mixing images: choose one")
        if self.label_smoothing:
            from herlev_fa.model.heads import HEADS  # imports torch: configs stay light without the option

            smoothable = ", ".join(name for name, head in HEADS.items() if head.smoothable)
            _check(HEADS[self.model.head].smoothable, f"{{label_smoothing}} applies to heads trained with "
                                                      f"cross-entropy on the class ({smoothable}), "
                                                      f"not to {self.model.head}")
        _check(math.isfinite(self.checkpoint_every) and self.checkpoint_every >= 0,
               "{checkpoint_every} {value} is out of range: use a number of seconds >= 0", self.checkpoint_every)
        _check(self.keep in KEEP, f"unknown {{keep}} {{value}}: choose one of {', '.join(KEEP)}", self.keep)
        _check(0 < self.val_split < 1, "{val_split} {value} is out of range: use a share between 0 and 1 "
                                       "(0.15: 15% of the training folds)", self.val_split)
        _check(self.precision in PRECISIONS,
               f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        if self.name is not None:
            check_name(self.name, "--name")
        _check(self.log in (None, *LOGGERS), f"unknown {{log}} {{value}}: choose {', '.join(LOGGERS)}", self.log)

    def to_json(self) -> dict[str, Any]:
        """Plain-JSON form (paths as strings) for the run's herlev.json."""

        def plain(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            return v

        return plain(dataclasses.asdict(self))


def resolve_precision(precision: str, device: str) -> str:
    """'auto' -> 'bf16' on a CUDA GPU that supports it, else 'fp32'."""
    import torch

    if precision != "auto":
        return precision
    return "bf16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "fp32"


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; HERLEV_DEVICE overrides 'auto'.

    Raises:
        HerlevError: 'cuda' was asked for and no GPU is visible.
    """
    import torch

    if device == "auto":
        device = os.environ.get("HERLEV_DEVICE", "cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise HerlevError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
    return device


# ---------------------------------------------------------------------------------------------
# Attribution: the settings of `explain`, `quantify`, `compare-explanations`, `compare-quantify`, `sanity` and
# `faithfulness`, once

# the attribution methods (all through captum) and their names in text
ATTRIBUTION_METHODS = {"ig": "Integrated Gradients", "smoothgrad": "SmoothGrad (IG under a noise tunnel)",
                       "gradientshap": "GradientShap", "saliency": "Saliency", "gradcam": "Grad-CAM",
                       "occlusion": "Occlusion"}
IG_BASELINES = ("mean", "black", "white", "blur")
# captum's quadrature rules for the path integral, and their names in text
IG_RULES = {"gausslegendre": "Gauss-Legendre", "riemann_middle": "midpoint", "riemann_trapezoid": "trapezoid",
            "riemann_left": "left Riemann", "riemann_right": "right Riemann"}


@dataclass(frozen=True)
class IGSettings:
    """How attributions are computed and batched; each field's default and help text live here.

    The attribution commands (`explain`, `quantify`, `compare-explanations`, `compare-quantify`, `sanity`,
    `faithfulness`) read their option defaults and help from these fields (`help_of(IGSettings, name)`). `method` picks
    the attribution method (Integrated Gradients by default); the other fields apply where the method uses them.
    """

    method: str = _opt("ig", help=(
        f"{' | '.join(ATTRIBUTION_METHODS)}: the attribution method (captum); smoothgrad is IG under a noise "
        "tunnel, gradcam the last convolutional stage upsampled to the input."))
    target: str = _opt("predicted", help=(
        "predicted | score | a class name: the logit (or severity score) explained."))
    steps: int = _opt(50, help="Steps (quadrature nodes) of the IG path integral (ig, smoothgrad).")
    rule: str = _opt("gausslegendre", help=(
        f"{' | '.join(IG_RULES)}: captum's quadrature rule of IG. riemann_middle (midpoint): 9-26% smaller delta than "
        "Gauss-Legendre on ResNets."))
    baseline: str = _opt("mean", help=(
        f"{' | '.join(IG_BASELINES)}: the reference input (IG's path start, GradientShap's and Occlusion's "
        "reference; mean = zero after normalisation; see docs/explainability.md)."))
    samples: int = _opt(8, help="Noisy samples per image (smoothgrad, gradientshap).")
    noise: float = _opt(0.15, help=(
        "Noise sd as a fraction of the input's value range (smoothgrad, gradientshap)."))
    window: int | None = _opt(None, help=(
        "Occlusion: side of the occluded square in model pixels, moved by half of it; None = input size / 8."))
    precision: str = _opt("auto", help=(
        "auto (IG on a GPU: bf16 autocast when its delta on the first batch is no larger than fp32's; fp32 otherwise) "
        "| fp32 | bf16 (autocast: faster, delta checked against the fp32 model)."))
    tol: float = _opt(0.05, help="Warn when |delta| exceeds this fraction of f(x) - f(baseline).")
    bs: int = _opt(8, help="Images per attribution call (IG: each costs STEPS forward/backward).")
    internal_batch_size: int | None = _opt(None, help=(
        "Images x steps per forward/backward pass; None = sized to the device's memory."))
    device: str = _opt("auto", help="auto | cpu | cuda.")

    def __post_init__(self) -> None:
        _check(self.method in ATTRIBUTION_METHODS,
               f"unknown method '{self.method}': choose one of {', '.join(ATTRIBUTION_METHODS)}")
        _check(self.steps >= 1, "{steps} {value} must be at least 1 (50 is captum's default)", self.steps)
        _check(self.rule in IG_RULES, f"unknown rule '{self.rule}': choose one of {', '.join(IG_RULES)}")
        _check(self.baseline in IG_BASELINES,
               f"unknown baseline '{self.baseline}': choose one of {', '.join(IG_BASELINES)}")
        _check(self.samples >= 1, "{samples} {value} must be at least 1", self.samples)
        _check(math.isfinite(self.noise) and self.noise >= 0, "{noise} {value} must be a finite number >= 0",
               self.noise)
        _check(self.window is None or self.window >= 1, "{window} {value} must be at least 1 pixel", self.window)
        _check(self.precision in PRECISIONS,
               f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")
        _check(self.tol > 0, "{tol} {value} must be > 0 (a fraction of f(x) - f(baseline), e.g. 0.05)", self.tol)
        _check(self.bs >= 1, "{bs} {value} must be at least 1", self.bs)
        _check(self.internal_batch_size is None or self.internal_batch_size >= 1,
               f"internal_batch_size {self.internal_batch_size} must be at least 1 (or None: automatic)")
        check_device(self.device)

    def describe(self, precision: str | None = None) -> str:
        """One line for titles and tables, e.g. 'target predicted, baseline mean, 50 Gauss-Legendre steps' (IG) or
        'Grad-CAM (last conv stage), target predicted'.

        `precision`: the one used (what `auto` chose), if known; fp32 is not named.
        """
        precision = precision or self.precision
        extra = {"fp32": "", "auto": ", auto precision"}.get(precision, f", {precision}")
        ig = f"baseline {self.baseline}, {self.steps} {IG_RULES[self.rule]} steps"
        noise = f"{self.samples} samples, noise {self.noise:g}"
        method = {"ig": "", "smoothgrad": f"SmoothGrad (IG, {noise}), ",
                  "gradientshap": f"GradientShap ({noise}, baseline {self.baseline}), ",
                  "saliency": "Saliency (|gradient|), ", "gradcam": "Grad-CAM (last conv stage), ",
                  "occlusion": f"Occlusion (window {self.window or 'size/8'}, baseline {self.baseline}), "}[self.method]
        tail = f", {ig}" if self.method in ("ig", "smoothgrad") else ""
        return f"{method}target {self.target}{tail}{extra}"


@dataclass(frozen=True)
class InferenceSettings:
    """How a trained run is applied to images (`evaluate`, `predict`); each field's default and help text live here."""

    bs: int = _opt(64, help="Images per forward pass.")
    device: str = _opt("auto", help=f"{' | '.join(DEVICES)}.")
    skip_bad: bool = _opt(False, help="Skip unreadable images with a warning instead of stopping.")
    threshold: float | str | None = _opt(None, help=(
        "Screening threshold: a cell is called abnormal when P(abnormal) (the severity score for reg) reaches it. "
        "A number, or spec95 / sens95: the operating point the run reached on its held-out fold. Default: 0.5."))
    progress: bool = _opt(True, help="A progress bar on long work.")

    def __post_init__(self) -> None:
        _check(self.bs >= 1, "{bs} {value} is out of range: use 1 or more images per batch", self.bs)
        check_device(self.device)


@dataclass(frozen=True)
class EvalSettings(InferenceSettings):
    """What `evaluate` scores and where it writes (with `InferenceSettings`' batching and threshold)."""

    data: Path | None = _opt(None, help="Data folder: the training data moved here, or another folder to evaluate "
                                        "whole.")
    split: str | None = _opt(None, help="valid (the run's held-out fold, under --data if the data moved) | all (every "
                                        "image of --data). Default: all when --data is given, else valid.")
    out: Path | None = _opt(None, help="Where to write metrics and plots. Default: the run folder for its held-out "
                                       "fold, else RUN/eval-<data folder>.")
    n_boot: int = _opt(1000, help="Resamples of the cells for 95% bootstrap intervals (seeded); 0 for none.")

    def __post_init__(self) -> None:
        super().__post_init__()
        for name in ("data", "out"):
            if getattr(self, name) is not None:
                object.__setattr__(self, name, Path(getattr(self, name)))
        _check(self.n_boot >= 0, "{n_boot} {value} is out of range: use 0 (no intervals) or more resamples",
               self.n_boot, {"n_boot": "--bootstrap"})


@dataclass(frozen=True)
class PredictSettings(InferenceSettings):
    """How `predict` treats each image (with `InferenceSettings`' batching and threshold)."""

    tta: bool = _opt(False, help="Average over the 8 flips and quarter turns of each image.")
    calibrated: bool = _opt(False, help="Scale the probabilities by the temperature herlev calibrate fitted on the "
                                        "run's held-out fold.")


# ---------------------------------------------------------------------------------------------
# A run configuration file (`herlev train --config run.yaml`): TrainConfig's own nested form

CONFIG_FILE = "run.yaml"  # the resolved configuration, written into every run folder


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A run configuration (YAML or JSON) as a nested dict: `TrainConfig.to_json`'s form, any field left out.

    Raises:
        HerlevError: missing, unreadable or not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise HerlevError(f"config file '{path}' does not exist")
    try:
        import yaml

        values = yaml.safe_load(path.read_text(encoding="utf-8"))  # JSON is YAML too
    except Exception as e:  # yaml.YAMLError, UnicodeDecodeError
        raise HerlevError(f"config file '{path}' is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(values, dict):
        raise HerlevError(f"config file '{path}' must hold a mapping, e.g. 'epochs: 30' and 'data: {{size: 224}}'")
    return values


def train_config(values: dict[str, Any], source: str = "the config") -> TrainConfig:
    """A TrainConfig from its nested plain form (`to_json`'s, or a run.yaml): missing fields take their defaults.

    `fold: all` and `lr: auto` are read as the CLI reads them.

    Raises:
        HerlevError: an unknown setting (named, with the known ones), or a value out of range.
    """
    sections = {"data": DataConfig, "model": ModelConfig}
    top = {f.name for f in dataclasses.fields(TrainConfig)} - set(sections)
    unknown = [k for k in values if k not in top and k not in sections]
    parts: dict[str, Any] = {}
    for name, cls in sections.items():
        given = values.get(name) or {}
        if not isinstance(given, dict):
            raise HerlevError(f"{source}: '{name}' must be a mapping of its settings")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown += [f"{name}.{k}" for k in given if k not in known]
        parts[name] = given
    if unknown:
        raise HerlevError(f"{source}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(top))}, "
                          f"data.*, model.* (see herlev train --help)")
    if "data" not in parts["data"]:
        raise HerlevError(f"{source} gives no data folder: set data: {{data: DIR}} or pass --data")
    rest = {k: v for k, v in values.items() if k in top}
    if rest.get("fold") == "all":
        rest["fold"] = None
    if rest.get("lr") == "auto":
        rest["lr"] = None
    try:
        return TrainConfig(DataConfig(**parts["data"]), ModelConfig(**parts["model"]), **rest)
    except TypeError as e:
        raise HerlevError(f"{source}: {e}") from None


def merge_settings(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`base` with `override`'s values on top, section by section (both in `to_json`'s nested form)."""
    merged = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key].update(value)
        else:
            merged[key] = value
    return merged

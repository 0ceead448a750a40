"""Frozen configuration of a training run: data, model and schedule, one comment per field.

The CLI only parses options into these; library functions take them. Validation lives in
``__post_init__`` so that nonsense numbers fail early with one clear `HerlevError`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from herlev_fa.errors import HerlevError
from herlev_fa.labels import TASK_NAMES

HEADS = ("cls", "reg", "cls_reg")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
KEEP = ("best", "last")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise HerlevError(message)


@dataclass(frozen=True)
class DataConfig:
    data: Path  # dataset root: class folders at most two levels down
    task: str = "severity"  # severity (5 classes) | herlev7 | binary; ignored with `classes`
    classes: Path | None = None  # class map file (YAML/JSON) for other folder-per-class datasets
    size: int = 224  # images are letterboxed to size x size pixels
    folds: int = 4  # stratified k-fold cross-validation
    seed: int = 42  # seeds folds, augmentation, initialisation and shuffling
    bs: int = 32  # batch size
    skip_bad: bool = False  # skip unreadable images with a warning instead of stopping
    workers: int | None = None  # DataLoader workers; None = 0 on CPU, up to 8 on CUDA

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        if self.classes is not None:
            object.__setattr__(self, "classes", Path(self.classes))
        _check(self.classes is not None or self.task in TASK_NAMES,
               f"unknown task '{self.task}': choose one of {', '.join(TASK_NAMES)}, or pass --classes FILE")
        _check(16 <= self.size <= 2048, f"--size {self.size} is out of range: use 16..2048 pixels (the paper used 224)")
        _check(2 <= self.folds <= 20, f"--folds {self.folds} is out of range: use 2..20")
        _check(self.bs >= 2, f"--bs {self.bs} is out of range: a batch needs at least 2 images (batch norm)")
        _check(self.workers is None or self.workers >= 0, f"--workers {self.workers} must be >= 0")


@dataclass(frozen=True)
class ModelConfig:
    arch: str = "resnet101"  # any timm architecture name
    head: str = "cls_reg"  # cls (cross-entropy) | reg (MSE on severity) | cls_reg (CE + lambda * MSE)
    pretrained: bool = True  # start from ImageNet weights (timm hub download), as in the paper
    weights: Path | None = None  # local weights file (safetensors / state dict) instead of the hub
    mse_weight: float = 1.0  # lambda: weight of the MSE term of cls_reg

    def __post_init__(self) -> None:
        if self.weights is not None:
            object.__setattr__(self, "weights", Path(self.weights))
        _check(self.head in HEADS, f"unknown head '{self.head}': choose one of {', '.join(HEADS)}")
        _check(self.mse_weight >= 0, f"--mse-weight {self.mse_weight} must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    data: DataConfig  # what to train on
    model: ModelConfig = field(default_factory=ModelConfig)  # what to train
    epochs: int = 20  # epochs (after one frozen epoch when fine-tuning pretrained weights)
    lr: float | None = 1e-3  # peak learning rate; None = fastai's lr_find suggestion
    wd: float = 0.05  # AdamW weight decay
    fold: int | None = 0  # held-out fold; None = train every fold
    device: str = "auto"  # auto | cpu | cuda
    out: Path = Path("runs")  # runs are written under this folder
    name: str | None = None  # run folder name; default: <time>-<arch>-<head>
    quiet: bool = False  # no progress bars
    resume: bool = False  # continue an interrupted run (`name`, or the newest unfinished under `out`)
    deterministic: bool = False  # GPU: deterministic kernels, no cuDNN autotuning (slower); CPU runs are always
    precision: str = "auto"  # auto (bf16 on GPUs that support it, else fp32) | fp32 | bf16
    keep: str = "best"  # best: the epoch with the lowest validation loss | last: the final epoch
    mse_warmup: float = 0.0  # cls_reg: ramp lambda from 0 over this fraction of training (0: constant)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        _check(1 <= self.epochs <= 10_000, f"--epochs {self.epochs} is out of range: use 1 or more")
        _check(self.lr is None or 0 < self.lr < 10, f"--lr {self.lr} is out of range: use a positive number or 'auto'")
        _check(self.wd >= 0, f"--wd {self.wd} must be >= 0")
        _check(self.fold is None or 0 <= self.fold < self.data.folds,
               f"--fold {self.fold} is out of range: use 0..{self.data.folds - 1} or 'all'")
        _check(self.device in DEVICES, f"unknown device '{self.device}': choose one of {', '.join(DEVICES)}")
        _check(0 <= self.mse_warmup <= 1, f"--mse-warmup {self.mse_warmup} is out of range: use a fraction 0..1")
        _check(self.keep in KEEP, f"unknown --keep '{self.keep}': choose one of {', '.join(KEEP)}")
        _check(self.precision in PRECISIONS, f"unknown precision '{self.precision}': choose one of {', '.join(PRECISIONS)}")

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
# Integrated Gradients: the settings of `explain`, `quantify` and `compare-explanations`, once

IG_BASELINES = ("mean", "black", "white", "blur")
# captum's quadrature rules for the path integral, and their names in text
IG_METHODS = {"gausslegendre": "Gauss-Legendre", "riemann_middle": "midpoint", "riemann_trapezoid": "trapezoid",
              "riemann_left": "left Riemann", "riemann_right": "right Riemann"}
IG_PRECISIONS = ("fp32", "bf16")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass(frozen=True)
class IGSettings:
    """How Integrated Gradients is computed and batched; each field's default and help text live here.

    The `explain`, `quantify` and `compare-explanations` commands read their option defaults and
    help from these fields (`IGSettings.help(name)`).
    """

    target: str = field(default="predicted", metadata=_help(
        "predicted | score | a class name: the logit (or severity score) explained."))
    steps: int = field(default=50, metadata=_help("Steps (quadrature nodes) of the IG path integral."))
    method: str = field(default="gausslegendre", metadata=_help(
        f"{' | '.join(IG_METHODS)}: captum's quadrature rule. riemann_middle (midpoint): 9-26% smaller delta than "
        "Gauss-Legendre on ResNets."))
    baseline: str = field(default="mean", metadata=_help(
        f"{' | '.join(IG_BASELINES)}: the input IG starts from (mean = zero after normalisation; see "
        "docs/explainability.md)."))
    precision: str = field(default="fp32", metadata=_help(
        "fp32 | bf16 (autocast: faster on recent GPUs and CPUs, larger delta)."))
    tol: float = field(default=0.05, metadata=_help("Warn when |delta| exceeds this fraction of f(x) - f(baseline)."))
    bs: int = field(default=8, metadata=_help("Images per IG call (each costs STEPS forward/backward)."))
    internal_batch_size: int | None = field(default=None, metadata=_help(
        "Images x steps per forward/backward pass; None = sized to the device's memory."))
    device: str = field(default="auto", metadata=_help("auto | cpu | cuda."))

    def __post_init__(self) -> None:
        _check(self.steps >= 1, f"--steps {self.steps} must be at least 1 (50 is captum's default)")
        _check(self.method in IG_METHODS, f"unknown method '{self.method}': choose one of {', '.join(IG_METHODS)}")
        _check(self.baseline in IG_BASELINES,
               f"unknown baseline '{self.baseline}': choose one of {', '.join(IG_BASELINES)}")
        _check(self.precision in IG_PRECISIONS,
               f"unknown precision '{self.precision}': choose one of {', '.join(IG_PRECISIONS)}")
        _check(self.tol > 0, f"--tol {self.tol} must be > 0 (a fraction of f(x) - f(baseline), e.g. 0.05)")
        _check(self.bs >= 1, f"--bs {self.bs} must be at least 1")
        _check(self.internal_batch_size is None or self.internal_batch_size >= 1,
               f"internal_batch_size {self.internal_batch_size} must be at least 1 (or None: automatic)")
        _check(self.device in DEVICES or self.device.startswith("cuda:"),
               f"unknown device '{self.device}': choose one of {', '.join(DEVICES)}")

    @classmethod
    def help(cls, name: str) -> str:
        """The help text of field `name` (for the CLI options)."""
        return next(f.metadata["help"] for f in dataclasses.fields(cls) if f.name == name)

    def describe(self) -> str:
        """One line for titles and tables, e.g. 'target predicted, baseline mean, 50 Gauss-Legendre steps'."""
        extra = "" if self.precision == "fp32" else f", {self.precision}"
        return (f"target {self.target}, baseline {self.baseline}, {self.steps} {IG_METHODS[self.method]} steps"
                f"{extra}")

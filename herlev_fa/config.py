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

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
KEEP = ("best", "last")
AUGMENTS = ("batch", "albumentations", "none")


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
    augment: str = "batch"  # batch (on the training device, default) | albumentations (per image on CPU workers) | none
    workers: int | None = None  # DataLoader workers for --augment albumentations; None = 0 on CPU, up to 8 on CUDA

    def __post_init__(self) -> None:
        object.__setattr__(self, "data", Path(self.data))
        if self.classes is not None:
            object.__setattr__(self, "classes", Path(self.classes))
        _check(self.classes is not None or self.task in TASK_NAMES,
               f"unknown task '{self.task}': choose one of {', '.join(TASK_NAMES)}, or pass --classes FILE")
        _check(16 <= self.size <= 2048, f"--size {self.size} is out of range: use 16..2048 pixels (the paper used 224)")
        _check(2 <= self.folds <= 20, f"--folds {self.folds} is out of range: use 2..20")
        _check(self.bs >= 2, f"--bs {self.bs} is out of range: a batch needs at least 2 images (batch norm)")
        _check(self.augment in AUGMENTS, f"unknown --augment '{self.augment}': choose one of {', '.join(AUGMENTS)}")
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
        from herlev_fa.model.heads import get_head  # imports torch: not at module level, configs stay light

        object.__setattr__(self, "head", get_head(self.head).name)  # a name of the registry; a Head is stored by name
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
    checkpoint_every: float = 300.0  # seconds between checkpoints (0: every epoch); always at the end of each phase

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        _check(1 <= self.epochs <= 10_000, f"--epochs {self.epochs} is out of range: use 1 or more")
        _check(self.lr is None or 0 < self.lr < 10, f"--lr {self.lr} is out of range: use a positive number or 'auto'")
        _check(self.wd >= 0, f"--wd {self.wd} must be >= 0")
        _check(self.fold is None or 0 <= self.fold < self.data.folds,
               f"--fold {self.fold} is out of range: use 0..{self.data.folds - 1} or 'all'")
        _check(self.device in DEVICES, f"unknown device '{self.device}': choose one of {', '.join(DEVICES)}")
        _check(0 <= self.mse_warmup <= 1, f"--mse-warmup {self.mse_warmup} is out of range: use a fraction 0..1")
        _check(self.checkpoint_every >= 0, f"--checkpoint-every {self.checkpoint_every} must be >= 0 seconds")
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


def __getattr__(name: str) -> Any:
    """`HEADS`: the registered head names, read from the registry (kept for code written against the old tuple)."""
    if name == "HEADS":
        from herlev_fa.model.heads import head_names

        return head_names()
    raise AttributeError(f"module 'herlev_fa.config' has no attribute '{name}'")

"""herlev_fa: train and explain cervical-cell severity classifiers on Herlev-format Pap-smear data.

The public API, one name per thing the CLI does:

    from herlev_fa import DataConfig, ModelConfig, PredictSettings, TrainConfig, train, evaluate, predict
    result = train(TrainConfig(DataConfig("herlev/"), ModelConfig("resnet101d", head="cls")))
    metrics = evaluate(result.runs[0])  # on its held-out fold; EvalSettings(data=...) for other cells
    predictions = predict(result.runs[0], ["cells/"], PredictSettings(tta=True))
    maps = explain(result.runs[0], ["cell.bmp"])  # Integrated Gradients

Importing the package does nothing to the process (no environment, warning-filter or backend
change) and loads no heavy library: each name below is imported from its module when first used.
No module of the package has the name of a function exported here (`train` lives in
`training.loop`, `evaluate` in `evaluation`, ...), so `herlev_fa.train` is always the function.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> module that defines it
_EXPORTS = {
    "DataConfig": "config", "ModelConfig": "config", "TrainConfig": "config", "IGSettings": "config",
    "EvalSettings": "config", "PredictSettings": "config",
    "HerlevError": "errors", "SettingError": "errors",
    "Task": "labels", "get_task": "labels", "load_class_map": "labels",
    "load_dataset": "data.items", "write_synthetic": "data.synth", "preprocess": "data.images",
    "build_model": "model.network", "build_learner": "training.learner",
    "TrainResult": "training.loop", "train": "training.loop", "lr_find": "training.loop",
    "evaluate": "evaluation",
    "Run": "runs", "load_run": "runs",
    "predict": "prediction",
    "ReproduceConfig": "reproduction", "reproduce": "reproduction",
    "explain": "explanation.attribution", "read_mask": "explanation.masks",
    "quantify": "explanation.report",
}
_ALIASES = {"load_dataset": "scan"}  # exported under another name than in its module

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'herlev_fa' has no attribute '{name}'")
    module = importlib.import_module(f"herlev_fa.{_EXPORTS[name]}")
    value = getattr(module, _ALIASES.get(name, name))
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])


if TYPE_CHECKING:  # for type checkers and IDEs: the same names, imported eagerly
    from herlev_fa.config import DataConfig, EvalSettings, IGSettings, ModelConfig, PredictSettings, TrainConfig
    from herlev_fa.data.images import preprocess
    from herlev_fa.data.items import scan as load_dataset
    from herlev_fa.data.synth import write_synthetic
    from herlev_fa.errors import HerlevError, SettingError
    from herlev_fa.evaluation import evaluate
    from herlev_fa.explanation.attribution import explain
    from herlev_fa.explanation.masks import read_mask
    from herlev_fa.explanation.report import quantify
    from herlev_fa.labels import Task, get_task, load_class_map
    from herlev_fa.model.network import build_model
    from herlev_fa.prediction import predict
    from herlev_fa.reproduction import ReproduceConfig, reproduce
    from herlev_fa.runs import Run, load_run
    from herlev_fa.training.learner import build_learner
    from herlev_fa.training.loop import TrainResult, lr_find, train

"""herlev_fa: train and explain cervical-cell severity classifiers on Herlev-format Pap-smear data.

The public API, one name per thing the CLI does:

    from herlev_fa import DataConfig, ModelConfig, TrainConfig, train, evaluate, load_run
    result = train(TrainConfig(DataConfig("herlev/"), ModelConfig("resnet101", head="cls_reg")))
    metrics = evaluate(result.runs[0])
    predictions = predict(result.runs[0], ["cells/"])
    maps = explain(result.runs[0], ["cell.bmp"])  # Integrated Gradients
"""

import os
import warnings

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # no network check at import
# raised by a dependency at import time, not by anything a user does
warnings.filterwarnings("ignore", message=r"`torch.jit.script` is deprecated", category=FutureWarning)

__version__ = "0.1.0"

from herlev_fa.config import DataConfig, ModelConfig, TrainConfig  # noqa: E402
from herlev_fa.data.items import scan as load_dataset  # noqa: E402
from herlev_fa.data.synth import write_synthetic  # noqa: E402
from herlev_fa.errors import HerlevError  # noqa: E402
from herlev_fa.evaluate import evaluate  # noqa: E402
from herlev_fa.explain.attribution import explain  # noqa: E402
from herlev_fa.explain.masks import read_mask  # noqa: E402
from herlev_fa.explain.report import quantify  # noqa: E402
from herlev_fa.labels import Task, get_task, load_class_map  # noqa: E402
from herlev_fa.model.learner import build_learner, build_model  # noqa: E402
from herlev_fa.predict import predict  # noqa: E402
from herlev_fa.reproduce import ReproduceConfig, reproduce  # noqa: E402
from herlev_fa.runs import Run, load_run  # noqa: E402
from herlev_fa.train import TrainResult, lr_find, train  # noqa: E402

__all__ = [
    "DataConfig", "ModelConfig", "TrainConfig", "HerlevError", "Task", "Run", "TrainResult",
    "get_task", "load_class_map", "load_dataset", "write_synthetic",
    "build_model", "build_learner", "train", "lr_find", "evaluate", "load_run", "predict",
    "ReproduceConfig", "reproduce", "explain", "quantify", "read_mask",
]

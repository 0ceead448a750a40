"""The fastai Learner of a fold: the network, the head's loss, AdamW, the epoch metrics and the callbacks.

What lives here: assembling the Learner (`build_learner`), the parameter groups that fine-tuning
freezes (`body_head_splitter`), and the epoch metrics as fastai metrics (`fastai_metrics`, read
from one host copy of the validation outputs per epoch). What does not: the network and its
weights (`herlev_fa.model.network`), the loss formula (`herlev_fa.model.heads`, wrapped for fastai
by `herlev_fa.model.loss`), the metric formulas (`herlev_fa.metrics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import fastai.callback.progress  # noqa: F401  (progress bar + no_bar/no_logging on Learner)
import fastai.callback.schedule  # noqa: F401  (fit_one_cycle, fine_tune, lr_find on Learner)
import torch
from fastai.learner import Learner, Metric
from fastai.optimizer import OptimWrapper
from torch import nn

from herlev_fa.labels import Task
from herlev_fa.metrics import EPOCH_METRICS, severity_metrics
from herlev_fa.model.heads import Head, SeverityModel
from herlev_fa.model.loss import SeverityLoss
from herlev_fa.training.callbacks import without_host_syncs


def body_head_splitter(model: SeverityModel) -> list[list[nn.Parameter]]:
    """Parameter groups [body, classifier] of the timm net, for freezing when fine-tuning.

    The head's fixed severity layer belongs to no group, so fastai's freeze/unfreeze never
    makes it trainable.
    """
    head = list(model.net.get_classifier().parameters())
    head_ids = {id(p) for p in head}
    return [[p for p in model.net.parameters() if id(p) not in head_ids], head]


def build_learner(dls, model: SeverityModel, task: Task, mse_weight: float = 1.0, wd: float = 0.05,
                  cbs: Sequence = (), path: str | Path = ".", smoothing: float = 0.0) -> Learner:
    """A fastai Learner (AdamW, the head's loss and metrics) over `dls`, with no host synchronisation per batch.

    The optimiser is torch's AdamW behind fastai's `OptimWrapper`: one multi-tensor update per step
    on GPUs, where fastai's own Adam runs a few kernels per parameter tensor (bench/optimizer_step.py).
    Weight decay applies to every parameter, as in a plain PyTorch loop.

    fastai's recorder, progress bar and metrics copy values to the host every batch; here they
    stay on the device until the epoch ends (`callbacks.without_host_syncs`, `fastai_metrics`).
    """
    loss = SeverityLoss(model.head, task.severities, mse_weight, smoothing)
    learn = Learner(dls, model.to(dls.device), loss_func=loss,
                    opt_func=partial(OptimWrapper, opt=partial(torch.optim.AdamW, foreach=True)),
                    metrics=fastai_metrics(model.head, task.severities),
                    splitter=body_head_splitter, wd=wd, cbs=list(cbs), path=Path(path))
    return without_host_syncs(learn)


class EpochOutputs:
    """One validation pass's model outputs and targets, kept on the device until its metrics are read.

    fastai's `AccumMetric` copies every batch to the host, once per metric: a synchronisation
    with the GPU per batch and metric. Here the batches stay where they are (gathered over
    processes like fastai's, by `learn.to_detach`) and go to the host once, when the epoch's
    metrics are first read; every epoch metric is computed from that one copy.
    """

    def __init__(self, head: Head, severities: Sequence[float]):
        self.head, self.severities = head, tuple(float(s) for s in severities)
        self.reset()

    def reset(self) -> None:
        self.outs: list[torch.Tensor] = []
        self.ys: list[torch.Tensor] = []
        self._metrics: dict | None = None

    def accumulate(self, learn) -> None:
        self.outs.append(learn.to_detach(learn.pred, cpu=False))  # [B, C]
        self.ys.append(learn.to_detach(learn.y, cpu=False))  # [B]
        self._metrics = None

    def metrics(self) -> dict:
        if self._metrics is None:
            if not self.outs:
                return dict.fromkeys(EPOCH_METRICS, math.nan)
            out = torch.cat(self.outs).float().cpu().numpy()  # float first: numpy has no bfloat16
            y = torch.cat(self.ys).cpu().numpy()
            self._metrics = severity_metrics(out, y, self.head, self.severities, full=False)
        return self._metrics


class SeverityMetric(Metric):
    """One scalar of `severity_metrics` as a fastai metric, read from an `EpochOutputs` it may share.

    The first metric of a shared `EpochOutputs` (`collects=True`) resets and fills it; the
    others only read it.
    """

    def __init__(self, name: str, outputs: EpochOutputs, collects: bool):
        self._name, self.outputs, self.collects = name, outputs, collects

    def reset(self) -> None:
        if self.collects:
            self.outputs.reset()

    def accumulate(self, learn) -> None:
        if self.collects:
            self.outputs.accumulate(learn)

    @property
    def value(self) -> float:
        return self.outputs.metrics()[self._name]

    @property
    def name(self) -> str:
        return self._name


def fastai_metrics(head: Head, severities: Sequence[float]) -> list[SeverityMetric]:
    """The scalar metrics as fastai metrics over the whole validation set, from one host copy per epoch."""
    outputs = EpochOutputs(head, severities)
    return [SeverityMetric(name, outputs, collects=i == 0) for i, name in enumerate(EPOCH_METRICS)]

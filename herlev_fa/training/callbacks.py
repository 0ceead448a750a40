"""Small fastai callbacks, one job each.

- `LossParts`: mean of each loss component (CE, MSE) over an epoch's train and valid batches.
- `EpochLog`: rewrites the per-epoch CSV log atomically after every epoch.
- `EpochLine`: one plain line per epoch (losses, metrics, elapsed, time left) for a log file,
  where progress bars would write carriage returns; `BatchLines`: the same per batch group.
- `BF16`: bfloat16 autocast around the forward pass and the loss, without a gradient scaler.
- `ChannelsLast`: model and batches in channels-last memory format (faster convolutions on GPUs).
- `DataParallel`: fastai's Accelerate trainer (DDP, sharded batches, gathered metrics) on any backend.
- `KeepBest`: keeps the weights of the best epoch (validation loss) in memory and restores them
  when fitting ends, so no pickle checkpoint is written during training.
- `DeviceSmoothLoss`, `DeviceAvgLoss`, `Progress` (installed by `without_host_syncs`): fastai's
  smoothed training loss, validation loss and progress bar without a device-to-host copy per
  batch (each such copy makes the host wait for the GPU to finish all queued work).

Epochs that fastai skips when a resumed fit starts later (`start_epoch`) still fire
`after_epoch`; these callbacks ignore them. In a distributed fit (fastai's `distrib_ctx`) the
model is wrapped in DistributedDataParallel: weights are read from the bare model, loss
components are summed over every process, and only rank 0 writes the log.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.callback.progress import ProgressCallback
from fastai.callback.tracker import TrackerCallback
from fastai.distributed import DistributedDL, DistributedTrainer
from fastai.learner import AvgLoss, AvgSmoothLoss, Learner
from fastai.torch_core import find_bs, num_distrib, rank_distrib

from herlev_fa.atomic import atomic_path
from herlev_fa.progress import PlainProgress, duration


def bare_model(model: torch.nn.Module) -> torch.nn.Module:
    """The model itself, out of DistributedDataParallel's wrapper (whose state_dict keys start with `module.`)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


class LossParts(Callback):
    """Per-epoch means of the loss's `parts`, as `train_ce`, `valid_mse`, ... in `self.last`."""

    order, run_valid = 55, True

    def before_fit(self) -> None:
        # the SeverityLoss: MixUp swaps learn.loss_func for its own while training
        self.severity_loss = self.learn.loss_func

    def before_epoch(self) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def after_loss(self) -> None:
        parts = getattr(self.severity_loss, "parts", {})
        bs = find_bs(self.learn.yb)
        split = "train" if self.training else "valid"
        for name, value in parts.items():
            key = f"{split}_{name}"
            # stays on the device: no host synchronisation per batch
            self.sums[key] = self.sums.get(key, 0) + value.float() * bs
            self.counts[key] = self.counts.get(key, 0) + bs

    def after_epoch(self) -> None:
        self.last = {k: float(self.sums[k]) / self.counts[k] for k in sorted(self.sums)}
        if num_distrib() > 1 and torch.distributed.is_initialized():  # each process saw its own shard
            device = self.dls.device if torch.distributed.get_backend() == "nccl" else "cpu"
            packed = torch.tensor([[float(self.sums[k]), self.counts[k]] for k in self.last],
                                  dtype=torch.float64, device=device)  # [parts, 2]: sum, count
            torch.distributed.all_reduce(packed)
            self.last = {k: float(packed[i, 0] / packed[i, 1]) for i, k in enumerate(self.last)}


class MseWarmup(Callback):
    """Ramp the regression constraint in: lambda grows linearly from 0 to its value over the first
    `fraction` of each fit's training, then stays (cls_reg only).

    Training batches use the ramped weight, validation always the full one, so that the
    validation loss (and the best epoch chosen by it) means the same at every epoch. Stateless:
    the weight is computed from fastai's `pct_train`, so a resumed run continues the same ramp.
    """

    order = 5  # before the loss

    def __init__(self, fraction: float):
        self.fraction = fraction

    def before_fit(self) -> None:
        # the SeverityLoss: MixUp swaps learn.loss_func for its own while training
        self.severity_loss = self.learn.loss_func
        self.full = self.severity_loss.mse_weight

    def before_batch(self) -> None:
        ramp = min(1.0, self.pct_train / self.fraction) if self.training else 1.0
        self.severity_loss.mse_weight = self.full * ramp

    def after_fit(self) -> None:
        self.severity_loss.mse_weight = self.full


class WeightAverage(Callback):
    """An exponential moving average of the weights (timm's `ModelEmaV3`, `decay` per training batch).

    The run keeps the average: `apply` puts it into the model once the last fit is over (hence
    `--keep last` only; the epoch log's validation columns are the raw weights'). The checkpoint
    saves it (`ema/` tensors) and a resumed run averages on from it (`pending`).
    """

    def __init__(self, decay: float):
        self.decay = decay
        self.average = None  # timm's ModelEmaV3: a copy of the model, made at the first fit
        self.pending: dict[str, torch.Tensor] | None = None  # the average to restore when a resumed fit starts

    def before_fit(self) -> None:
        from timm.utils import ModelEmaV3

        if hasattr(self.learn, "lr_finder"):
            return
        if self.average is None:
            self.average = ModelEmaV3(bare_model(self.learn.model), decay=self.decay)
        if self.pending is not None:
            self.average.module.load_state_dict(self.pending)
            self.pending = None

    def after_batch(self) -> None:
        if self.training and self.average is not None and not hasattr(self.learn, "lr_finder"):
            self.average.update(bare_model(self.learn.model))

    def apply(self) -> None:
        """Load the average into the model (after training; a no-op when no fit ran)."""
        if self.average is not None:
            bare_model(self.learn.model).load_state_dict(self.average.module.state_dict())


def _not_training_epoch(cb: Callback) -> bool:
    """True for epochs that trained nothing: skipped on resume, lr_find's, get_preds' pass."""
    skipped, cb.skipped = getattr(cb, "skipped", False), False
    return skipped or hasattr(cb.learn, "lr_finder") or hasattr(cb.learn, "gather_preds")


class EpochLog(Callback):
    """Append one row per epoch (recorder values + loss parts) to `path`, rewriting it atomically."""

    order = 65  # after Recorder (50), LossParts (55) and trackers (60)

    def __init__(self, path: str | Path, **extra: object):
        self.path, self.extra, self.rows = Path(path), extra, []

    def after_cancel_epoch(self) -> None:
        self.skipped = True

    def after_epoch(self) -> None:
        if _not_training_epoch(self):
            return
        rec = self.learn.recorder
        row = {"epoch": len(self.rows), **self.extra}
        row.update({n: v for n, v in zip(rec.metric_names[1:], rec.log[1:]) if n != "time"})
        parts = getattr(getattr(self.learn, "loss_parts", None), "last", {})
        row.update(parts)
        row["lr"] = float(self.learn.opt.hypers[-1]["lr"])
        self.rows.append(row)
        if rank_distrib() != 0:  # one writer
            return
        with atomic_path(self.path) as tmp:
            pd.DataFrame(self.rows).to_csv(tmp, index=False)


def _plain(value: object) -> str:
    try:
        return f"{float(value):.4g}"
    except (TypeError, ValueError):
        return str(value)


class EpochLine(Callback):
    """Print one plain line per epoch: 'fold 0 epoch 3/21: train_loss 0.81, ..., 0:01:05 elapsed, about 0:05:30 left'.

    `total` counts the epochs of every fit of the run (fine-tuning's frozen epoch too); set
    `offset` to the epochs of the fits before the current one. The estimate is this session's
    rate: a resumed run counts from where it resumed.
    """

    order = 66  # after Recorder (50) has the epoch's values

    def __init__(self, label: str, total: int, write=print):
        self.label, self.total, self.write = label, total, write
        self.offset, self.done, self.started = 0, 0, None

    def after_cancel_epoch(self) -> None:
        self.skipped = True

    def after_epoch(self) -> None:
        if _not_training_epoch(self) or rank_distrib() != 0:
            return
        now = time.monotonic()
        self.done += 1
        epoch = self.offset + self.learn.epoch + 1
        rec = self.learn.recorder
        values = ", ".join(f"{n} {_plain(v)}" for n, v in zip(rec.metric_names[1:], rec.log[1:]) if n != "time")
        elapsed = now - self.started
        left = elapsed / self.done * max(self.total - epoch, 0)
        tail = f", about {duration(left)} left" if epoch < self.total else ""
        self.write(f"{self.label}epoch {epoch}/{self.total}: {values}; {duration(elapsed)} elapsed{tail}", flush=True)

    def before_epoch(self) -> None:
        if self.started is None:  # this session's first epoch: its time gives the first estimate
            self.started = time.monotonic()


class BatchLines(Callback):
    """Plain progress lines per batch group of a fit (`progress.PlainProgress`), e.g. for fastai's lr_find."""

    order = 66

    def __init__(self, description: str, total: int):
        self.progress = PlainProgress(description, total)

    def after_batch(self) -> None:
        if self.training and rank_distrib() == 0:
            self.progress.advance(1)

    def after_fit(self) -> None:
        if rank_distrib() == 0:
            self.progress.close()  # lr_find stops early when the loss diverges


class KeepBest(TrackerCallback):
    """Keep the best epoch's weights (by `monitor`, default validation loss) and restore them after fit.

    With `last=True` it only counts epochs: the final weights stay, and `best_epoch` is the last
    epoch (no choice made on the validation set, for an unbiased held-out estimate).
    """

    order = 61

    def __init__(self, monitor: str = "valid_loss", last: bool = False):
        super().__init__(monitor=monitor)
        self.last = last
        self.best_state: dict[str, torch.Tensor] | None = None
        self.best_epoch = -1  # counted over every fit (a fine-tune's two phases)
        self.seen = 0  # training epochs seen over every fit
        self.pending = None  # (best, best_epoch, seen, best_state) to restore when a resumed fit starts

    def before_fit(self) -> None:
        super().before_fit()
        if self.pending is not None:
            self.best, self.best_epoch, self.seen, self.best_state = self.pending
            self.pending = None

    def after_cancel_epoch(self) -> None:
        self.skipped = True

    def after_epoch(self) -> None:
        if _not_training_epoch(self):
            return
        super().after_epoch()
        self.seen += 1
        if self.last:
            self.best_epoch = self.seen - 1
        elif self.new_best:
            self.best_epoch = self.seen - 1
            self.best_state = {k: v.detach().clone() for k, v in bare_model(self.learn.model).state_dict().items()}

    def after_fit(self) -> None:
        if self.run and self.best_state is not None:
            bare_model(self.learn.model).load_state_dict(self.best_state)
        super().after_fit()


class BF16(Callback):
    """bfloat16 autocast for the forward pass and the loss, on the DataLoaders' device type.

    No gradient scaler: bf16 has fp32's exponent range, so gradients do not underflow (fastai's
    MixedPrecision keeps a disabled scaler and syncs with the host every step). Predictions are
    cast back to fp32 before the loss and the metrics.
    """

    order = 10  # as fastai's MixedPrecision: before everything that reads predictions

    def before_batch(self) -> None:
        self.autocast = torch.autocast(torch.device(self.dls.device).type, dtype=torch.bfloat16)
        self.autocast.__enter__()

    def after_pred(self) -> None:
        self.learn.pred = self.pred.float()

    def after_loss(self) -> None:
        self._leave()

    def after_cancel_batch(self) -> None:
        self._leave()

    def _leave(self) -> None:
        if getattr(self, "autocast", None) is not None:
            self.autocast.__exit__(None, None, None)
            self.autocast = None


class ChannelsLast(Callback):
    """Model and input batches in channels-last memory format (tensor cores read NHWC natively)."""

    order = 5

    def before_fit(self) -> None:
        self.learn.model.to(memory_format=torch.channels_last)

    def before_batch(self) -> None:
        self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x
                              for x in self.learn.xb)


class _AnyBackendDL(DistributedDL):
    """fastai's DistributedDL, broadcasting each epoch's batch order on the process group's device.

    fastai sends it as a CUDA tensor (NCCL's requirement), which fails with gloo on a CPU-only host.
    """

    def _broadcast(self, t: list[int], rank: int) -> list[int]:
        device = "cuda" if torch.distributed.get_backend() == "nccl" else "cpu"
        t = torch.tensor(t, dtype=torch.long, device=device)
        torch.distributed.broadcast(t, rank)
        return t.cpu().tolist()


class DataParallel(DistributedTrainer):
    """fastai's DistributedTrainer (Accelerate's DDP, each process one shard of every batch, predictions
    and losses gathered for the metrics), usable on the CPU (gloo) as well as on GPUs (NCCL)."""

    def _wrap_dl(self, dl):
        return dl if isinstance(dl, DistributedDL) else _AnyBackendDL(dl, device=self.learn.model.device)


class DeviceSmoothLoss(AvgSmoothLoss):
    """fastai's smoothed training loss (`Recorder.smooth_loss`), kept on the loss's device.

    fastai's own copies each batch's loss to the host (`to_detach`), a synchronisation per step.
    Here `value` stays a device scalar; `Recorder` reads it as a number once per epoch.
    """

    def accumulate(self, learn) -> None:
        self.count += 1
        loss = learn.loss.detach().float().mean()
        self.val = torch.lerp(loss, self.val.to(loss.device), self.beta)


class DeviceAvgLoss(AvgLoss):
    """fastai's validation loss (`Recorder.loss`), summed on the device and read once per epoch.

    Gathered over processes like fastai's (`learn.to_detach`), without the copy to the host.
    """

    def accumulate(self, learn) -> None:
        bs = find_bs(learn.yb)
        self.total += learn.to_detach(learn.loss.mean(), cpu=False).float() * bs
        self.count += bs


class Progress(ProgressCallback):
    """fastai's progress bars, showing the smoothed loss at most every `every` seconds.

    fastai formats the loss after every batch, which copies it to the host each step.
    """

    def __init__(self, every: float = 1.0):
        self.every, self._shown = every, -math.inf

    def after_batch(self) -> None:
        self.pbar.update(self.iter + 1)
        now = time.monotonic()
        if hasattr(self, "smooth_loss") and now - self._shown >= self.every:
            self.pbar.comment = f"{float(self.smooth_loss):.4f}"
            self._shown = now


def without_host_syncs(learn: Learner) -> Learner:
    """Swap fastai's per-batch host reads (smoothed loss, validation loss, progress bar) for device-side ones.

    With the metrics of `herlev_fa.training.learner.fastai_metrics` (kept on the device until the epoch
    ends), a training or validation batch then never waits for the GPU. Returns `learn`.
    """
    rec = learn.recorder
    rec.smooth_loss, rec.loss = DeviceSmoothLoss(beta=rec.smooth_loss.beta), DeviceAvgLoss()
    if any(isinstance(cb, ProgressCallback) for cb in learn.cbs):
        learn.remove_cb(ProgressCallback)
        learn.add_cb(Progress())
    return learn

"""Experiment tracking for `herlev train --log`: one class per tracker, each an optional package.

- `TensorBoard`: fastai's `TensorBoardCallback`, event files in RUN/tensorboard.
- `Wandb`: fastai's `WandbCallback` inside one Weights & Biases run per fold (files in RUN/wandb;
  `WANDB_MODE=offline` keeps them there without an account).
- `MLflow`: one MLflow run per fold, its epoch rows logged by `MlflowLog` (fastai has no MLflow
  callback and MLflow 3 has no fastai flavour); the store is `MLFLOW_TRACKING_URI`, else
  OUT/mlflow.db beside the run folders.

Each tracker is checked (`check`) before any training work, so a missing package is one line,
not a traceback after the data is decoded; `tracked` opens the tracker's run around one fold's
fits and closes it, as failed if the fold raised. Only rank 0 of a distributed launch tracks.
This module is not the training loop: `loop.py` calls these two functions.
"""

from __future__ import annotations

import contextlib
import math
import importlib
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastai.callback.core import Callback
from fastai.torch_core import rank_distrib

from herlev_fa.errors import HerlevError
from herlev_fa.training.callbacks import _not_training_epoch


def _missing(name: str, package: str) -> HerlevError:
    return HerlevError(f"--log {name} needs the {package} package: pip install \"herlev_fa[{name}]\"")


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'model': {'arch': 'x'}} -> {'model.arch': 'x'}: the run's settings as one level of parameters."""
    flat = {}
    for k, v in config.items():
        if isinstance(v, dict):
            flat.update(_flat(v, f"{prefix}{k}."))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def run_name(run_dir: Path, config: dict[str, Any]) -> tuple[str, str]:
    """(name, group) of a fold's tracker run: the run folder's name; a cross-validation fold's is 'RUN-foldK'."""
    if config.get("fold") is not None:
        return run_dir.name, run_dir.name
    return f"{run_dir.parent.name}-{run_dir.name}", run_dir.parent.name


class Tracker:
    """One `--log` choice: the package it needs and the fastai callbacks of one fold's run."""

    name: str
    package: str  # the PyPI name its extra installs

    def modules(self) -> tuple[str, ...]:
        """The modules that must import for this tracker to work."""
        raise NotImplementedError

    def check(self) -> None:
        """Raises HerlevError (naming the pip command) when the tracker's package is not installed."""
        try:
            for module in self.modules():
                importlib.import_module(module)
        except ImportError:
            raise _missing(self.name, self.package) from None

    @contextlib.contextmanager
    def run(self, run_dir: Path, fold: int, config: dict[str, Any]) -> Iterator[list[Callback]]:
        """The callbacks that track one fold's fits; the tracker's run is open while they are used."""
        raise NotImplementedError


class TensorBoard(Tracker):
    """fastai's TensorBoard callback: losses, metrics and learning rates in RUN/tensorboard."""

    name, package = "tensorboard", "tensorboard"

    def modules(self) -> tuple[str, ...]:
        return "fastai.callback.tensorboard", "torch.utils.tensorboard"  # the second needs the tensorboard package

    @contextlib.contextmanager
    def run(self, run_dir: Path, fold: int, config: dict[str, Any]) -> Iterator[list[Callback]]:
        self.check()
        from fastai.callback.tensorboard import TensorBoardCallback

        class TensorBoardLog(TensorBoardCallback):
            order = 70  # after the Recorder (50) has the batch's smoothed loss and the epoch's metrics

            def after_batch(self) -> None:  # fastai's also writes torch AdamW's non-numeric options (foreach: None)
                self.writer.add_scalar("train_loss", self.smooth_loss, self.train_iter)
                for i, hypers in enumerate(self.opt.hypers):
                    for k, v in hypers.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool):
                            self.writer.add_scalar(f"{k}_{i}", v, self.train_iter)

        # no graph trace and no image grid: the first needs a traceable model, the second fastai's show_results
        yield [TensorBoardLog(log_dir=str(run_dir / "tensorboard"), trace_model=False, log_preds=False)]


class Wandb(Tracker):
    """fastai's W&B callback in one W&B run per fold: the run's settings, per-batch loss and hyper-parameters,
    per-epoch losses and metrics. Project `herlev_fa` unless WANDB_PROJECT says otherwise."""

    name, package = "wandb", "wandb"

    def modules(self) -> tuple[str, ...]:
        return "wandb", "fastai.callback.wandb"

    @contextlib.contextmanager
    def run(self, run_dir: Path, fold: int, config: dict[str, Any]) -> Iterator[list[Callback]]:
        self.check()
        import wandb
        from fastai.callback.wandb import WandbCallback

        class WandbLog(WandbCallback):
            """fastai's callback, less the epochs a resumed fit skips (fastai still fires after_epoch for them)."""

            def before_fit(self) -> None:
                # fastai's own also dumps the Learner's settings, formatted with fastcore's init_args, which
                # raises on plain values (vars(3)) in the fastai/fastcore this package installs; the run's
                # settings went to wandb.init instead, so only fastai's step bookkeeping is kept
                self._wandb_step = wandb.run.step - 1
                self._wandb_epoch = 0 if not wandb.run.step else math.ceil(wandb.run.summary["epoch"])
                self.run = not hasattr(self.learn, "lr_finder") and not hasattr(self, "gather_preds")

            def after_cancel_epoch(self) -> None:
                self.skipped = True

            def after_epoch(self) -> None:
                if not _not_training_epoch(self):
                    super().after_epoch()

        name, group = run_name(run_dir, config)
        try:
            # console off: the plain epoch lines and log.csv stay ours, and W&B does not wrap sys.stdout
            run = wandb.init(project=None if os.environ.get("WANDB_PROJECT") else "herlev_fa", name=name, group=group,
                             dir=str(run_dir), config=config, job_type=f"fold{fold}",
                             settings=wandb.Settings(console="off"))
        except wandb.errors.Error as e:
            raise HerlevError(f"--log wandb could not start a run: {str(e).splitlines()[0]} (log in with 'wandb "
                              "login', or set WANDB_MODE=offline)") from None
        failed = True
        try:
            # no prediction table or model artifact: both need fastai's test_dl / show_results on item loaders,
            # which the device-fed batches do not have; the weights are the run folder's
            yield [WandbLog(log=None, log_preds=False, log_model=False, log_dataset=False)]
            failed = False
        finally:
            run.finish(exit_code=1 if failed else 0)


class MlflowLog(Callback):
    """Log each trained epoch's row of log.csv (losses, metrics, loss parts, lr) to an MLflow run, step = epoch."""

    order = 67  # after EpochLog (65) has the epoch's row

    def __init__(self, client: Any, run_id: str):
        self.client, self.run_id = client, run_id

    def after_cancel_epoch(self) -> None:
        self.skipped = True

    def after_epoch(self) -> None:
        from mlflow.entities import Metric

        if _not_training_epoch(self):
            return
        row = self.learn.epoch_log.rows[-1]
        stamp = int(1000 * time.time())
        metrics = [Metric(k, float(v), stamp, int(row["epoch"])) for k, v in row.items()
                   if k not in ("epoch", "fold") and isinstance(v, (int, float)) and not isinstance(v, bool)]
        self.client.log_batch(self.run_id, metrics=metrics)


class MLflow(Tracker):
    """One MLflow run per fold in experiment `herlev_fa` (or MLFLOW_EXPERIMENT_NAME): the run's settings as
    parameters, each epoch's log.csv row as metrics. Store: MLFLOW_TRACKING_URI, else sqlite OUT/mlflow.db."""

    name, package = "mlflow", "mlflow-skinny"

    def modules(self) -> tuple[str, ...]:
        local = () if os.environ.get("MLFLOW_TRACKING_URI") else ("alembic", "sqlalchemy")  # the local sqlite store
        return "mlflow", *local

    @contextlib.contextmanager
    def run(self, run_dir: Path, fold: int, config: dict[str, Any]) -> Iterator[list[Callback]]:
        self.check()
        from mlflow import MlflowClient
        from mlflow.entities import Param, RunStatus

        out = Path(config["out"]).resolve()
        client = MlflowClient(tracking_uri=None if os.environ.get("MLFLOW_TRACKING_URI")
                              else f"sqlite:///{out / 'mlflow.db'}")
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", "herlev_fa")
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(
            experiment, artifact_location=(out / "mlartifacts").as_uri())
        name, group = run_name(run_dir, config)
        run_id = client.create_run(experiment_id, run_name=name, tags={
            "run_folder": str(run_dir.resolve()), "fold": str(fold), "group": group}).info.run_id
        params = [Param(k, str(v)[:6000]) for k, v in _flat(config).items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 parameters per call
            client.log_batch(run_id, params=params[i:i + 100])
        status = "FAILED"
        try:
            yield [MlflowLog(client, run_id)]
            status = "FINISHED"
        finally:
            client.set_terminated(run_id, RunStatus.to_string(getattr(RunStatus, status)))


TRACKERS: dict[str, Tracker] = {t.name: t for t in (TensorBoard(), Wandb(), MLflow())}  # config.LOGGERS names them


def check_tracker(name: str | None) -> None:
    """Raises HerlevError naming the pip command when `--log name`'s package is missing (before any work)."""
    if name is not None:
        TRACKERS[name].check()


@contextlib.contextmanager
def tracked(name: str | None, run_dir: Path, fold: int, config: dict[str, Any]) -> Iterator[list[Callback]]:
    """The fastai callbacks of `--log name` for one fold (none without, or off rank 0), its run open meanwhile.

    `config` is the run's `TrainConfig.to_json()`, logged as the run's settings.

    Raises:
        HerlevError: the tracker's package is missing, or its service refused to start a run.
    """
    if name is None or rank_distrib() != 0:
        yield []
        return
    with TRACKERS[name].run(run_dir, fold, config) as cbs:
        yield cbs

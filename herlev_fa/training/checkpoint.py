"""Training checkpoints: what one holds, when it is written, how it is read, and which runs may resume it.

A checkpoint is a folder `RUN/checkpoint/` holding everything the next epoch depends on: the
weights, the optimiser's state, the best epoch kept so far, the weight average (`--ema`), the epoch
log, and the random states (Python, NumPy, torch on the CPU and the GPU, the DataLoader's
shuffler), so that a resumed run
continues exactly as the uninterrupted one would have. The augmentation draws from those
generators too (fastai's batch transforms from torch's; the albumentations policy is reseeded
from torch's for every image, and `--balance` on the DataBlock draws from NumPy's), so nothing
inside a library needs saving.

When: at most every `TrainConfig.checkpoint_every` seconds (an epoch on a GPU lasts under a
second, a resnet101 checkpoint is half a gigabyte) and at the end of every fit (each phase of a
fine-tune). A run killed in between resumes from the last one written.

No pickle: tensors go to safetensors, everything else to JSON. The folder is written under a
temporary name and swapped in with renames, so a kill at any point leaves either the previous
or the new checkpoint whole (`.checkpoint.old` is picked up if the kill fell between renames).
The checkpoint is removed when the run finishes.

Which runs may resume it: those whose `settings` (the options that shape the numbers) are the
same; `herlev reproduce` reuses finished fold runs by the same rule.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.distributed import DistributedDL
from fastai.torch_core import rank_distrib
from safetensors.torch import load_file, save_file

from herlev_fa.atomic import out_of_space
from herlev_fa.errors import HerlevError
from herlev_fa.training.callbacks import bare_model

NAME, OLD, TMP = "checkpoint", ".checkpoint.old", ".checkpoint.tmp-"

# the options that shape a run's numbers, by section of TrainConfig's JSON form; the device,
# workers, checkpoint interval, output folder and verbosity do not
_DATA_KEYS = ("data", "task", "classes", "size", "folds", "seed", "bs", "skip_bad", "augment", "policy", "balance")
_MODEL_KEYS = ("arch", "pretrained", "weights", "mse_weight")  # the head is compared on its own
_SCHEDULE_KEYS = ("epochs", "lr", "wd", "keep", "val_split", "mse_warmup", "label_smoothing", "ema", "mixup",
                  "cutmix")
# options added after the first version, at the value a record without them was made with
# (val_split None: --keep best chose on the held-out fold itself)
_ADDED = {"keep": "best", "mse_warmup": 0.0, "augment": "albumentations", "policy": "poster", "val_split": None,
          "balance": False, "label_smoothing": 0.0, "ema": 0.0, "mixup": 0.0, "cutmix": 0.0}


def settings(config: dict) -> dict:
    """The options of a TrainConfig's JSON form (`TrainConfig.to_json`) that shape the numbers, flat.

    The head is not among them: a reproduction trains several heads with the same settings.
    """
    data, model = config.get("data") or {}, config.get("model") or {}
    flat = {**{k: data.get(k, _ADDED.get(k)) for k in _DATA_KEYS},
            **{k: model.get(k, _ADDED.get(k)) for k in _MODEL_KEYS},
            **{k: config.get(k, _ADDED.get(k)) for k in _SCHEDULE_KEYS}}
    if flat["keep"] == "last":  # no epoch is chosen: the inner split is not made
        flat["val_split"] = None
    return json.loads(json.dumps(flat))  # tuples -> lists, as read back from a file


def backfill(flat: dict) -> dict:
    """Flat settings read from an older record, with the options added since at the value it was made with."""
    return {**{k: v for k, v in _ADDED.items() if k in settings({})}, **flat}


def differences(old: dict, new: dict) -> str:
    """'key: old there, new now; ...' for every key whose value differs ('' when none does)."""
    keys = [k for k in {**old, **new} if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in keys)


@dataclass
class Resume:
    """Where a run stopped: phase index, last completed epoch of that phase, and the saved state."""

    phase: int
    epoch: int
    lr: float
    state: dict[str, Any]  # the JSON part
    tensors: dict[str, torch.Tensor]  # the safetensors part
    path: Path

    def start(self, phase: int, epochs: int) -> int | None:
        """First epoch to run of `phase` (of `epochs` epochs) when resuming here; None: nothing left in it."""
        if phase < self.phase:
            return None
        start = self.epoch + 1 if phase == self.phase else 0
        return start if start < epochs else None

    def describe(self, phases: list[int]) -> str:
        """'epoch 4 of 6' (counted over every phase of a run whose phases have these epoch counts)."""
        done = sum(phases[:self.phase]) + self.epoch + 1
        return f"epoch {done + 1} of {sum(phases)}" if done < sum(phases) else f"the end of its {sum(phases)} epochs"

    def weights(self) -> dict[str, torch.Tensor]:
        """The weights to keep if no epoch is left to run: the best epoch's, else the average (--ema), else the last."""
        return _part(self.tensors, "best") or _part(self.tensors, "ema") or _part(self.tensors, "model")


def _part(tensors: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The state dict saved under `name/` in a checkpoint's tensors (model, best, ema), its keys without the prefix.

    The head's module after the network (`SeverityModel.readout`) was once called `head`: an older
    checkpoint's `head.` keys are read as `readout.`.
    """
    prefix = f"{name}/"
    part = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return {f"readout.{k[5:]}" if k.startswith("head.") else k: v for k, v in part.items()}


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer, np.bool_)) or (isinstance(x, torch.Tensor) and x.numel() == 1):
        return x.item()
    if isinstance(x, (tuple, list)):
        return [_jsonable(v) for v in x]
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, np.ndarray):
        return x.tolist()
    return x


def _tuples(x: Any) -> Any:
    """JSON lists back to the nested tuples `random.setstate` wants."""
    return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def _train_dl(learn):
    """The training DataLoader itself, out of a distributed fit's sharding wrapper."""
    dl = learn.dls.train
    return dl.dl if isinstance(dl, DistributedDL) else dl


def capture(learn, keep, log, phase: int, epoch: int, lr: float, config: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """The training state after `epoch` of `phase`: (JSON part, tensor part)."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in bare_model(learn.model).state_dict().items()}
    if keep.best_state is not None:
        tensors.update({f"best/{k}": v.detach().cpu().contiguous() for k, v in keep.best_state.items()})
    average = getattr(learn, "weight_average", None)  # --ema: the WeightAverage callback, by fastai's naming
    if average is not None and average.average is not None:
        ema = average.average.module.state_dict()
        tensors.update({f"ema/{k}": v.detach().cpu().contiguous() for k, v in ema.items()})
    opt = learn.opt.state_dict()  # torch's: {"state": {param index: {name: tensor}}, "param_groups": [...]}
    for pid, st in opt["state"].items():
        tensors.update({f"opt/{pid}/{k}": v.detach().cpu().contiguous() for k, v in st.items()})
    tensors["rng/torch"] = torch.get_rng_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"rng/cuda/{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    np_state = np.random.get_state()
    state = {
        "phase": phase, "epoch": epoch, "lr": lr, "config": config,
        "opt_groups": _jsonable(opt["param_groups"]),
        "best": {"value": _jsonable(keep.best), "epoch": keep.best_epoch, "seen": keep.seen},
        "log_rows": _jsonable(log.rows),
        "rng": {
            "python": _jsonable(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "loader": _jsonable(_train_dl(learn).rng.getstate()),
        },
    }
    return state, tensors


def save(run_dir: Path, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write the checkpoint folder whole, then swap it in (and drop what a killed writer left half-done)."""
    _remove_unfinished(run_dir)
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=TMP))
    try:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
        target, old = run_dir / NAME, run_dir / OLD
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
    except Exception as e:  # a full disk: one line naming the checkpoint and its size, the half-written folder removed
        full = out_of_space(run_dir / NAME, e, size=sum(t.numel() * t.element_size() for t in tensors.values()))
        if full is None:
            raise
        raise full from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def find(run_dir: Path) -> Resume | None:
    """The run's checkpoint, or None if it has none.

    Raises:
        HerlevError: the checkpoint is damaged.
    """
    for name in (NAME, OLD):
        path = run_dir / name
        if (path / "state.json").is_file() and (path / "tensors.safetensors").is_file():
            try:
                state = json.loads((path / "state.json").read_text(encoding="utf-8"))
                tensors = load_file(str(path / "tensors.safetensors"))
                if not isinstance(state.get("opt_groups"), list):
                    raise ValueError("no optimiser state of this version")
                return Resume(int(state["phase"]), int(state["epoch"]), float(state["lr"]), state, tensors, path)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, OSError) as e:
                raise HerlevError(f"checkpoint '{path}' is damaged or from another version ({e}); "
                                  "remove it to start the run again") from None
    return None


def mismatch(old: dict, new: dict) -> str:
    """How two TrainConfig JSON forms differ in what shapes a run's numbers, the head included ('' if not)."""
    return differences({**settings(old), "head": (old.get("model") or {}).get("head")},
                       {**settings(new), "head": (new.get("model") or {}).get("head")})


def find_matching(run_dir: Path, config: dict) -> Resume | None:
    """The run's checkpoint if it was written with the same `settings` as `config` (TrainConfig JSON).

    Raises:
        HerlevError: the checkpoint is damaged or was written with other settings (the message names them).
    """
    resume = find(run_dir)
    if resume is not None:
        diff = mismatch(resume.state.get("config") or {}, config)
        if diff:
            raise HerlevError(f"run '{run_dir}' was started with other settings ({diff}); resume it with the same "
                              "options or train under another --name")
    return resume


def restore(learn, keep, log, resume: Resume) -> None:
    """Put the saved state back into a freshly built learner whose optimiser exists."""
    t, s = resume.tensors, resume.state
    learn.model.load_state_dict(_part(t, "model"))
    device = next(learn.model.parameters()).device
    opt_state: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in t.items():
        if key.startswith("opt/"):
            _, pid, name = key.split("/", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    learn.opt.load_state_dict({"state": opt_state, "param_groups": s["opt_groups"]})
    best = {k: v.to(device) for k, v in _part(t, "best").items()}
    keep.pending = (s["best"]["value"], s["best"]["epoch"], s["best"]["seen"], best or None)
    ema = {k: v.to(device) for k, v in _part(t, "ema").items()}
    if ema:
        learn.weight_average.pending = ema
    log.rows = list(s["log_rows"])
    torch.set_rng_state(t["rng/torch"])
    cuda = [t[k] for k in sorted(k for k in t if k.startswith("rng/cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    random.setstate(_tuples(s["rng"]["python"]))
    kind, keys, *rest = s["rng"]["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    _train_dl(learn).rng.setstate(_tuples(s["rng"]["loader"]))


def _remove_unfinished(run_dir: Path) -> None:
    for tmp in run_dir.glob(f"{TMP}*"):  # one writer per run folder: any of these is a killed save's
        shutil.rmtree(tmp, ignore_errors=True)


def remove(run_dir: Path) -> None:
    """Remove the checkpoint and whatever a killed save left (the run finished)."""
    for name in (NAME, OLD):
        shutil.rmtree(run_dir / name, ignore_errors=True)
    _remove_unfinished(run_dir)


class SaveCheckpoint(Callback):
    """Save the checkpoint after a training epoch when `every` seconds have passed since the last
    one, and after the fit's last epoch; rank 0 only (order: after EpochLog has its row)."""

    order = 70

    def __init__(self, run_dir: Path, keep, log, phase: int, lr: float, config: dict, every: float):
        self.run_dir, self.keep, self.log, self.phase, self.lr, self.config = run_dir, keep, log, phase, lr, config
        self.every, self.skipping = every, False
        self.last_saved = time.monotonic()

    def after_cancel_epoch(self) -> None:
        self.skipping = True

    def after_epoch(self) -> None:
        if self.skipping or hasattr(self.learn, "gather_preds") or hasattr(self.learn, "lr_finder"):
            self.skipping = False
            return
        last = self.epoch == self.n_epoch - 1
        if rank_distrib() != 0 or not (last or time.monotonic() - self.last_saved >= self.every):
            return
        state, tensors = capture(self.learn, self.keep, self.log, self.phase, self.epoch, self.lr, self.config)
        save(self.run_dir, state, tensors)
        self.last_saved = time.monotonic()

"""Per-epoch training checkpoints, so that a killed run resumes from its last completed epoch.

A checkpoint is a folder `RUN/checkpoint/` holding everything the next epoch depends on:
the weights, fastai's optimiser state, the best epoch kept so far, the epoch log, and the
random states (Python, NumPy, torch, the DataLoader's shuffler, albumentations' generators),
so that a resumed run continues exactly as the uninterrupted one would have.

No pickle: tensors go to safetensors, everything else to JSON. The folder is written under a
temporary name and swapped in with renames, so a kill at any point leaves either the previous
or the new checkpoint whole (`.checkpoint.old` is picked up if the kill fell between renames).
The checkpoint is removed when the run finishes.
"""

from __future__ import annotations

import json
import random
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.distributed import DistributedDL
from fastai.torch_core import rank_distrib
from fastcore.foundation import L
from safetensors.torch import load_file, save_file

from herlev_fa.training.callbacks import bare_model
from herlev_fa.data.augment import AlbumentationsTransform
from herlev_fa.errors import HerlevError

NAME, OLD = "checkpoint", ".checkpoint.old"


@dataclass
class Resume:
    """Where a run stopped: phase index, last completed epoch of that phase, and the saved state."""

    phase: int
    epoch: int
    lr: float
    state: dict[str, Any]  # the JSON part
    tensors: dict[str, torch.Tensor]  # the safetensors part
    path: Path


def _jsonable(x: Any) -> Any:
    if isinstance(x, (np.floating, np.integer, np.bool_)) or (isinstance(x, torch.Tensor) and x.numel() == 1):
        return x.item()
    if isinstance(x, (tuple, list, L)):
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


def _generators(learn) -> list:
    """Every random-state holder of the training augmentation: each Compose and each of its transforms
    draws from its own (numpy Generator, random.Random) pair."""

    def walk(t):
        yield t
        for child in getattr(t, "transforms", []):
            yield from walk(child)

    return [holder for tfm in _train_dl(learn).after_item.fs if isinstance(tfm, AlbumentationsTransform)
            for holder in walk(tfm.train_aug)]


def capture(learn, keep, log, phase: int, epoch: int, lr: float, config: dict) -> tuple[dict, dict[str, torch.Tensor]]:
    """The training state after `epoch` of `phase`: (JSON part, tensor part)."""
    tensors = {f"model/{k}": v.detach().cpu().contiguous() for k, v in bare_model(learn.model).state_dict().items()}
    if keep.best_state is not None:
        tensors.update({f"best/{k}": v.detach().cpu().contiguous() for k, v in keep.best_state.items()})
    opt = learn.opt.state_dict()
    opt_plain = []
    for i, st in enumerate(opt["state"]):
        plain = {}
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"opt/{i}/{k}"] = v.detach().cpu().contiguous()
            else:
                plain[k] = _jsonable(v)
        opt_plain.append(plain)
    tensors["rng/torch"] = torch.get_rng_state()
    np_state = np.random.get_state()
    state = {
        "phase": phase, "epoch": epoch, "lr": lr, "config": config,
        "opt_state": opt_plain, "opt_hypers": _jsonable(opt["hypers"]),
        "best": {"value": _jsonable(keep.best), "epoch": keep.best_epoch, "seen": keep.seen},
        "log_rows": _jsonable(log.rows),
        "rng": {
            "python": _jsonable(random.getstate()),
            "numpy": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "loader": _jsonable(_train_dl(learn).rng.getstate()),
            "augment": [{"numpy": _jsonable(g.random_generator.bit_generator.state),
                         "python": _jsonable(g.py_random.getstate())} for g in _generators(learn)],
        },
    }
    return state, tensors


def save(run_dir: Path, state: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Write the checkpoint folder whole, then swap it in."""
    tmp = Path(tempfile.mkdtemp(dir=run_dir, prefix=".checkpoint.tmp-"))
    try:
        save_file(tensors, str(tmp / "tensors.safetensors"))
        (tmp / "state.json").write_text(json.dumps(state), encoding="utf-8")
        target, old = run_dir / NAME, run_dir / OLD
        if target.exists():
            shutil.rmtree(old, ignore_errors=True)
            target.rename(old)
        tmp.rename(target)
        shutil.rmtree(old, ignore_errors=True)
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
                return Resume(int(state["phase"]), int(state["epoch"]), float(state["lr"]), state, tensors, path)
            except (json.JSONDecodeError, KeyError, TypeError, ValueError, OSError) as e:
                raise HerlevError(f"checkpoint '{path}' is damaged ({e}); remove it to start the run again") from None
    return None


def restore(learn, keep, log, resume: Resume) -> None:
    """Put the saved state back into a freshly built learner whose optimiser exists."""
    t, s = resume.tensors, resume.state
    learn.model.load_state_dict({k[len("model/"):]: v for k, v in t.items() if k.startswith("model/")})
    device = next(learn.model.parameters()).device
    opt_state = []
    for i, plain in enumerate(s["opt_state"]):
        st = dict(plain)
        prefix = f"opt/{i}/"
        st.update({k[len(prefix):]: v.to(device) for k, v in t.items() if k.startswith(prefix)})
        opt_state.append(st)
    learn.opt.load_state_dict({"state": opt_state, "hypers": s["opt_hypers"]})
    best = {k[len("best/"):]: v.to(device) for k, v in t.items() if k.startswith("best/")}
    keep.pending = (s["best"]["value"], s["best"]["epoch"], s["best"]["seen"], best or None)
    log.rows = list(s["log_rows"])
    torch.set_rng_state(t["rng/torch"])
    random.setstate(_tuples(s["rng"]["python"]))
    kind, keys, *rest = s["rng"]["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    _train_dl(learn).rng.setstate(_tuples(s["rng"]["loader"]))
    for holder, saved in zip(_generators(learn), s["rng"]["augment"], strict=True):
        holder.random_generator.bit_generator.state = saved["numpy"]
        holder.py_random.setstate(_tuples(saved["python"]))


def remove(run_dir: Path) -> None:
    for name in (NAME, OLD):
        shutil.rmtree(run_dir / name, ignore_errors=True)


class SaveCheckpoint(Callback):
    """After every training epoch, save the checkpoint (order: after EpochLog has its row); rank 0 only."""

    order = 70

    def __init__(self, run_dir: Path, keep, log, phase: int, lr: float, config: dict):
        self.run_dir, self.keep, self.log, self.phase, self.lr, self.config = run_dir, keep, log, phase, lr, config
        self.skipping = False

    def after_cancel_epoch(self) -> None:
        self.skipping = True

    def after_epoch(self) -> None:
        if self.skipping or hasattr(self.learn, "gather_preds") or hasattr(self.learn, "lr_finder"):
            self.skipping = False
            return
        if rank_distrib() != 0:
            return
        state, tensors = capture(self.learn, self.keep, self.log, self.phase, self.epoch, self.lr, self.config)
        save(self.run_dir, state, tensors)

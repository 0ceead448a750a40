"""Data-parallel plumbing of training: the process group, rank 0's values, the distributed fit.

Started by `accelerate launch` or `torchrun` with several processes, the fits run data-parallel
through fastai's Accelerate integration (its DistributedTrainer, as in `Learner.distrib_ctx`);
everything else runs in every process, but only rank 0 writes (docs/distributed.md). In a single
process every function here does nothing, or returns its input.
"""

from __future__ import annotations

import atexit
import contextlib
import os

import fastai.distributed  # noqa: F401  (adds Learner.detach_distributed)
import torch
from fastai.callback.progress import ProgressCallback
from fastai.torch_core import num_distrib, rank_distrib

from herlev_fa.training.callbacks import DataParallel


def is_main() -> bool:
    """True in a single process, and in rank 0 of a distributed launch: the process that writes."""
    return rank_distrib() == 0


def _leave_process_group() -> None:
    """Leave the process group if this process is in one (registered to run at interpreter exit)."""
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def process_group(device: str):
    """Join the launcher's process group (gloo on the CPU, NCCL on GPUs) when there are several processes.

    Accelerate's state is a process-wide singleton, so the group is joined once per process (a
    later `train` reuses it) and left at interpreter exit: a gloo group still open when the
    interpreter tears down can abort the process ("terminate called without an active exception")
    after the run was written.
    """
    if num_distrib() <= 1:
        yield
        return
    from accelerate import PartialState

    PartialState(cpu=device == "cpu")  # joins the group, sets this process's GPU from LOCAL_RANK
    atexit.unregister(_leave_process_group)  # registered once, however many times train runs
    atexit.register(_leave_process_group)
    yield
    torch.distributed.barrier()  # every process finished: rank 0's files are whole


def from_main(value):
    """Rank 0's `value`, on every rank (in a single process: `value`)."""
    if num_distrib() <= 1:
        return value
    box = [value]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]


@contextlib.contextmanager
def data_parallel(learn, device: str):
    """Fit data-parallel through fastai's Accelerate integration when launched as several processes.

    What `Learner.distrib_ctx` does, with `DataParallel` as the trainer: fastai's own broadcasts the
    batch order as a CUDA tensor, which gloo on the CPU cannot take. Batch norm is synchronised
    across processes on GPUs only (torch's SyncBatchNorm has no CPU kernel).
    """
    if num_distrib() <= 1:
        yield
        return
    cpu = device == "cpu"
    learn.add_cb(DataParallel(sync_bn=not cpu, cpu=cpu))
    if rank_distrib():
        learn.remove_cb(ProgressCallback)
    try:
        yield
    finally:
        learn.detach_distributed()


@contextlib.contextmanager
def as_single_process():
    """Let fastai see one process (it reads WORLD_SIZE and RANK from the environment).

    Outside the distributed fit, a launched process runs lr_find and predicts on its own: fastai
    would otherwise gather every tensor from processes that are not doing the same, and save
    lr_find's temporary weights in rank 0 only, and both would wait forever.
    """
    if num_distrib() <= 1:
        yield
        return
    saved = {k: os.environ.get(k) for k in ("WORLD_SIZE", "RANK")}
    os.environ.update(WORLD_SIZE="1", RANK="0")
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

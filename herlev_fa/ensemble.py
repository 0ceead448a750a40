"""Fold ensembles: the run folders of a cross-validation (`fold0/ .. foldK/`) used as one model.

`herlev train --fold all` and `herlev reproduce` leave one run folder per fold under a common
folder. `load_ensemble` loads them all and returns a `Run` whose model is a `FoldEnsemble`: the
mean of the fold models' raw outputs, an ordinary `nn.Module`, so that `predict`, `evaluate`,
`explain` (the attribution of the ensemble's output) and `quantify` use it like a single model.
`runs.load_run` hands such a folder here.

The mean is taken over raw outputs [B, C]: logits of class heads (the ensemble's probabilities
are the softmax of the mean logit, a normalised geometric mean of the members'), the severity
score of `reg`, and for `cls_reg` the logits and the mean of the members' scores. For `corn` it
is the mean of the members' K - 1 conditional logits: each binary task "y > k given y > k - 1"
pools the members' log-odds, as the class heads pool logits, and the result is again a CORN
output (its probabilities are not the mean of the members'; test-time augmentation, which
averages views of one model, averages probabilities instead).

What does not live here: the held-out evaluation of each fold model (each has its own run
folder). An ensemble has no held-out cells, since every cell trained some of its members.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from herlev_fa.errors import HerlevError
from herlev_fa.runs import Run

FOLD_NAME = re.compile(r"fold(\d+)")
SHARED_KEYS = ("head", "task", "image_size", "mean", "std")  # what every member must agree on


def mean_output(outs: Tensor) -> Tensor:
    """Raw outputs of M models [M, B, C] -> the ensemble's raw output [B, C], their mean."""
    return outs.float().mean(dim=0)


class FoldEnsemble(nn.Module):
    """Several models with the same output format as one: input [B, 3, S, S] -> mean raw output [B, C]."""

    def __init__(self, models: Sequence[nn.Module]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)

    def forward(self, x: Tensor) -> Tensor:
        return mean_output(torch.stack([m(x) for m in self.members]))  # [M, B, C] -> [B, C]


@dataclass
class EnsembleRun(Run):
    """A `Run` whose model is the `FoldEnsemble` of `members` (the fold runs, in fold order)."""

    members: list[Run] = field(default_factory=list)

    @property
    def fold(self) -> int:
        raise self._no_held_out()

    def folds(self):
        raise self._no_held_out()

    def _no_held_out(self) -> HerlevError:
        return HerlevError(f"'{self.path}' is an {self.describe()}: it has no held-out fold (every cell trained some "
                           "of them); use it on new cells (--data DIR --split all), or pass one fold run folder")

    def describe(self) -> str:
        return describe(len(self.members))


def describe(n: int) -> str:
    """How command output names an ensemble."""
    return f"ensemble of {n} fold models (mean of their outputs)"


def fold_folders(folder: str | Path) -> list[Path]:
    """The `fold<k>` subfolders of a cross-validation folder, by fold number; empty for anything else.

    A folder that holds `herlev.json` itself is a single run, never an ensemble.
    """
    folder = Path(folder)
    if not folder.is_dir() or (folder / "herlev.json").is_file():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := FOLD_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]


def load_ensemble(folder: str | Path) -> EnsembleRun:
    """Load every fold run of a cross-validation folder as one `EnsembleRun`.

    Raises:
        HerlevError: no fold folder, a fold missing from 0..K-1 (K read from the folds' own
            records), a fold run that cannot be loaded, or folds that disagree on head, task,
            image size or normalisation; each message names the fold folder.
    """
    from herlev_fa.runs import load_run

    folder = Path(folder)
    folds = fold_folders(folder)
    if not folds:
        raise HerlevError(f"'{folder}' holds no fold0/ .. foldK/ run folders: pass a run folder or the folder of a "
                          "cross-validated run")
    members = []
    for path in folds:
        try:
            members.append(load_run(path))
        except HerlevError as e:
            raise HerlevError(f"fold model '{path}' of the ensemble is broken: {e}") from None
    first = members[0]
    expected = [folder / f"fold{k}" for k in range(int(first.meta["n_folds"]))]
    missing = [p for p in expected if p not in folds]
    beyond = [p for p in folds if p not in expected]
    if beyond:  # a fold number the runs' own n_folds has no place for (copied in, or renamed)
        absent = f"; {', '.join(p.name for p in missing)} missing" if missing else ""
        raise HerlevError(f"'{beyond[0]}' is not a fold of this {len(expected)}-fold run (its folds are fold0 .. "
                          f"fold{len(expected) - 1}{absent}); remove or rename it")
    for run, path in zip(members, folds):
        if f"fold{run.fold}" != path.name:
            raise HerlevError(f"fold model '{path}' holds the run of fold {run.fold} (its herlev.json): the folder was "
                              f"renamed; name it fold{run.fold}")
    if missing:
        raise HerlevError(f"fold model '{missing[0]}' of the ensemble is missing ({len(folds)} of "
                          f"{len(expected)} fold run folders found); finish it (herlev train --resume) or remove the "
                          "folder's other folds")
    for run in members[1:]:
        for key in SHARED_KEYS:
            if run.meta[key] != first.meta[key]:
                raise HerlevError(f"fold model '{run.path}' has another {key} than '{first.path}' "
                                  f"({run.meta[key]} vs {first.meta[key]}): they cannot be averaged")
    meta = {**first.meta, "ensemble": [str(r.path) for r in members]}
    model = FoldEnsemble([r.model for r in members]).eval()
    return EnsembleRun(folder, meta, first.task, model, members)

"""Fold ensembles: the fold models of a cross-validation (`fold0/ .. foldK/`) used as one model.

`herlev train --fold all` and `herlev reproduce` leave one run folder per fold under a common
folder; `runs.load_run` opens such a folder as one `Run` whose model is a `FoldEnsemble`, an
ordinary `nn.Module`, so that `predict`, `evaluate`, `explain` (the attribution of the
ensemble's output) and `quantify` use it like a single model.

The members are averaged as the 8 views of test-time augmentation are, by `Head.average_views`:
one rule for both. Class heads average the class probabilities (returned as their log, so that
softmax gives the mean back), `cls_reg` appends the score of the mean probabilities (the mean of
the members' scores: the score is linear in p), `corn` returns the conditional logits of the mean
probabilities, `reg` averages the score. An ensemble has no held-out cells, since every cell
trained some of its members (`Run.fold` is None).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from herlev_fa.model.heads import Head

FOLD_NAME = re.compile(r"fold(\d+)")


class FoldEnsemble(nn.Module):
    """Several models with one head as one: input [B, 3, S, S] -> the head's average of their outputs [B, C]."""

    def __init__(self, models: Sequence[nn.Module], head: Head, severities: Sequence[float]):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one model")
        self.members = nn.ModuleList(models)
        self.head, self.severities = head, tuple(float(v) for v in severities)

    def forward(self, x: Tensor) -> Tensor:
        outs = torch.stack([m(x) for m in self.members])  # [M, B, C]
        return self.head.average_views(outs, self.severities)  # [B, C], fp32


def describe(n_members: int) -> str:
    """How command output names an ensemble of `n_members` fold models."""
    return f"ensemble of {n_members} fold models (mean of their outputs)"


def fold_folders(folder: str | Path) -> list[Path]:
    """The `fold<k>` subfolders of a cross-validation folder, by fold number; empty for anything else.

    A folder that holds `herlev.json` itself is a single run, never an ensemble.
    """
    folder = Path(folder)
    if not folder.is_dir() or (folder / "herlev.json").is_file():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if p.is_dir() and (m := FOLD_NAME.fullmatch(p.name))]
    return [p for _, p in sorted(found)]

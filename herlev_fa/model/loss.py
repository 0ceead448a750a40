"""The training loss of a head, following fastai's loss contract (`activation`, `decodes`).

The head (`herlev_fa.model.heads`) owns the formula (`cls`: cross-entropy; `reg`: MSE of the
score against the true class's severity; `cls_reg`: CE + lambda * MSE, the regression
constraint); this module holds what fastai needs around it: the severities on the device,
lambda (`mse_weight`, which `MseWarmup` may change), the label smoothing, and the components of
the last batch in `parts` (detached, on the device) for `herlev_fa.training.callbacks.LossParts` to log.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from herlev_fa.model.heads import Head


class SeverityLoss(nn.Module):
    """Loss for model output [B, C] and class-index targets [B]; returns a scalar.

    `y_int` and `reduction` follow fastai's loss contract: fastai's MixUp and CutMix see integer
    targets, set `reduction` to "none" for one loss per cell [B], and mix those.
    """

    y_int = True

    def __init__(self, head: Head, severities: Sequence[float], mse_weight: float = 1.0,
                 smoothing: float = 0.0):
        super().__init__()
        self.head, self.mse_weight, self.smoothing = head, float(mse_weight), float(smoothing)
        self.register_buffer("severities", torch.tensor(list(severities), dtype=torch.float32))
        self.reduction = "mean"
        self.parts: dict[str, Tensor] = {}

    def forward(self, out: Tensor, target: Tensor) -> Tensor:
        loss, self.parts = self.head.loss(out, target, self.severities.to(out.device), self.mse_weight,
                                          smoothing=self.smoothing, reduction=self.reduction)
        return loss

    def activation(self, out: Tensor) -> Tensor:
        """Output [B, C] -> class probabilities [B, K], or the score [B, 1] for a score-only head."""
        return self.head.activation(out, self.severities)

    def decodes(self, act: Tensor) -> Tensor:
        """Activation -> predicted class index [B] (for a score-only head: the nearest severity's class)."""
        return self.head.decodes(act, self.severities)

"""The training loss of each head, following fastai's loss contract (`activation`, `decodes`).

`cls`: cross-entropy; `reg`: MSE of the score against the true class's severity; `cls_reg`:
CE + lambda * MSE (the regression constraint). The components of the last batch are kept in
`parts` (detached, on the device) for `herlev_fa.training.callbacks.LossParts` to log.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from herlev_fa.model.heads import nearest_class, split_output


class SeverityLoss(nn.Module):
    """Loss for model output [B, C] and class-index targets [B]; returns a scalar."""

    def __init__(self, head: str, severities: Sequence[float], mse_weight: float = 1.0):
        super().__init__()
        self.head, self.mse_weight = head, float(mse_weight)
        self.register_buffer("severities", torch.tensor(list(severities), dtype=torch.float32))
        self.parts: dict[str, Tensor] = {}

    def forward(self, out: Tensor, target: Tensor) -> Tensor:
        logits, score = split_output(out, self.head, self.severities)
        sev = self.severities.to(out.device)[target]  # [B] true severity
        mse = F.mse_loss(score.float(), sev)
        if self.head == "reg":
            self.parts = {"mse": mse.detach()}
            return mse
        ce = F.cross_entropy(logits.float(), target)
        self.parts = {"ce": ce.detach(), "mse": mse.detach()}
        return ce if self.head == "cls" else ce + self.mse_weight * mse

    def activation(self, out: Tensor) -> Tensor:
        """Output [B, C] -> class probabilities [B, K], or the score [B, 1] for `reg`."""
        logits, score = split_output(out, self.head, self.severities)
        return score[:, None] if logits is None else logits.float().softmax(dim=1)

    def decodes(self, act: Tensor) -> Tensor:
        """Activation -> predicted class index [B] (for `reg`: the nearest severity's class)."""
        if self.head == "reg":
            return nearest_class(act[:, 0], self.severities)
        return act.argmax(dim=1)

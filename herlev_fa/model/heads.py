"""Output heads: what the network's last layer means for each pipeline, with shape contracts.

The timm network keeps its own classifier (`global_pool`, `fc`), resized to `n_outputs(head, K)`,
so its weights load into a plain `timm.create_model(arch, num_classes=n_outputs)`. The head
module here only turns that classifier's output into the pipeline's output:

| head      | timm fc     | model output                                      |
|-----------|-------------|---------------------------------------------------|
| `cls`     | [B, K]      | [B, K] class logits                               |
| `reg`     | [B, 1]      | [B, 1] severity score                             |
| `cls_reg` | [B, K]      | [B, K + 1] class logits, then the severity score  |

`cls_reg` is the regression constraint of Pirovano et al.: softmax probabilities go through a
fixed (never trained) linear layer whose weights are the class severities, so the score is
sum_i p_i * severity_i.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

HEADS = ("cls", "reg", "cls_reg")


def n_outputs(head: str, n_classes: int) -> int:
    """Width of the timm classifier for a head: K, except 1 for `reg`."""
    return 1 if head == "reg" else n_classes


class ExpectedSeverity(nn.Module):
    """Fixed linear layer: probabilities [B, K] -> severity score [B, 1] = p @ severities."""

    def __init__(self, severities: Sequence[float]):
        super().__init__()
        self.fc = nn.Linear(len(severities), 1, bias=False)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([list(severities)], dtype=torch.float32))
        self.fc.weight.requires_grad_(False)

    def forward(self, probs: Tensor) -> Tensor:
        return self.fc(probs)


class ClsRegHead(nn.Module):
    """Logits [B, K] -> [B, K + 1]: the logits, then the expected severity of their softmax."""

    def __init__(self, severities: Sequence[float]):
        super().__init__()
        self.score = ExpectedSeverity(severities)

    def forward(self, logits: Tensor) -> Tensor:
        score = self.score(logits.float().softmax(dim=1))  # [B, 1], softmax in fp32 under autocast
        return torch.cat([logits.float(), score], dim=1)  # [B, K + 1]


def make_head(head: str, severities: Sequence[float]) -> nn.Module:
    return ClsRegHead(severities) if head == "cls_reg" else nn.Identity()


class SeverityModel(nn.Module):
    """A timm network (`net`, with its classifier) followed by a pipeline head (`head`).

    Input float [B, 3, S, S] normalised images; output as in the module table.
    Only `net` holds trained weights, so `net.state_dict()` is the whole checkpoint.
    """

    def __init__(self, net: nn.Module, head: str, severities: Sequence[float]):
        super().__init__()
        self.net = net
        self.head_name = head
        self.head = make_head(head, severities)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.net(x))


def split_output(out: Tensor, head: str, severities: Tensor) -> tuple[Tensor | None, Tensor]:
    """Model output [B, C] -> (class logits [B, K] or None for `reg`, severity score [B]).

    For `cls` the score is the expected severity of the softmax, as `cls_reg` computes it.
    """
    if head == "reg":
        return None, out[:, 0]
    if head == "cls_reg":
        return out[:, :-1], out[:, -1]
    return out, out.float().softmax(dim=1) @ severities.to(out.device, torch.float32)


def nearest_class(score: Tensor, severities: Tensor) -> Tensor:
    """Severity score [B] -> index [B] of the class with the nearest severity (round and clip)."""
    sev = severities.to(score.device, torch.float32)
    return (score.float()[:, None] - sev[None, :]).abs().argmin(dim=1)

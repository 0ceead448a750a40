"""Output heads: what the network's last layer means for each pipeline, one class per head.

The timm network keeps its own classifier (`global_pool`, `fc`), resized to
`head.n_outputs(K)`, so its weights load into a plain `timm.create_model(arch, num_classes=...)`.
A `Head` owns everything that depends on the pipeline, the way fastai puts `activation` /
`decodes` on its losses and timm puts the classifier contract on its models:

| head      | timm fc | `module` after it                  | model output                        | loss             |
|-----------|---------|------------------------------------|-------------------------------------|------------------|
| `cls`     | [B, K]  | identity                           | [B, K] class logits                 | CE               |
| `reg`     | [B, 1]  | identity                           | [B, 1] severity score               | MSE              |
| `cls_reg` | [B, K]  | `AppendExpectedSeverity` (fixed)   | [B, K + 1] logits, then the score   | CE + lambda*MSE  |
| `corn`    | [B, K-1]| identity                           | [B, K - 1] conditional logits       | CORN (coral-pytorch) |
| `sord`    | [B, K]  | identity                           | [B, K] class logits                 | SORD (dlordinal) |

`cls_reg` is the regression constraint of Pirovano et al.: softmax probabilities go through a
fixed (never trained) linear layer whose weights are the class severities, so the score is
sum_i p_i * severity_i.

The ordinal heads use the libraries' losses. `corn` (Shi, Cao & Raschka 2021): output k is the
logit of P(y > k | y > k - 1), so P(y > k) is the cumulative product of the sigmoids and
p_k = P(y > k - 1) - P(y > k); its class is coral-pytorch's decoding, the number of k with
P(y > k) > 0.5 (the median of p, not always its argmax). `sord` (Diaz & Marathe 2019): K class
logits trained with cross-entropy against soft labels softmax(-alpha * |k - y|). Both score the
expected severity under p, and need classes with distinct severities in increasing order.

Adding a head is one subclass of `Head` decorated with `@register_head`; `HEADS` (name ->
class) is the only list of head names: config validation, the CLI's help and run loading read it.
Run folders and configurations store the head's `name`; `get_head` turns it into the `Head`
object where a name enters (a configuration, a run's `herlev.json`), and every function behind
takes the object.
"""  # noqa: E501 (markdown table rows)

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import ClassVar

import torch
import torch.nn.functional as F
from coral_pytorch.dataset import corn_label_from_logits
from coral_pytorch.losses import corn_loss
from torch import Tensor, nn

from herlev_fa.errors import HerlevError

Severities = Sequence[float] | Tensor


def _sev(severities: Severities, like: Tensor) -> Tensor:
    """Class severities [K] as float32 on the device of `like`."""
    return torch.as_tensor(severities, dtype=torch.float32, device=like.device)


def nearest_class(score: Tensor, severities: Severities) -> Tensor:
    """Severity score [B] -> index [B] of the class with the nearest severity (round and clip)."""
    sev = _sev(severities, score)
    return (score.float()[:, None] - sev[None, :]).abs().argmin(dim=1)


def expected_severity(logits: Tensor, severities: Severities) -> Tensor:
    """Class logits [B, K] -> sum_i softmax(logits)_i * severity_i [B], computed in fp32."""
    return logits.float().softmax(dim=1) @ _sev(severities, logits)


def decode_parts(logits: Tensor | None, score: Tensor, severities: Severities) -> tuple[Tensor | None, Tensor, Tensor]:
    """(class logits [B, K] or None, score [B]) -> (probabilities [B, K] or None, score [B], class [B]).

    With logits the class is their argmax; without, the class of the nearest severity.
    """
    if logits is None:
        return None, score.float(), nearest_class(score, severities)
    probs = logits.float().softmax(dim=1)
    return probs, score.float(), probs.argmax(dim=1)


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


class AppendExpectedSeverity(nn.Module):
    """Logits [B, K] -> [B, K + 1]: the logits, then the expected severity of their softmax.

    The severity layer `score.fc` is fixed: no gradient, in no optimiser group.
    """

    def __init__(self, severities: Sequence[float]):
        super().__init__()
        self.score = ExpectedSeverity(severities)

    def forward(self, logits: Tensor) -> Tensor:
        score = self.score(logits.float().softmax(dim=1))  # [B, 1], softmax in fp32 under autocast
        return torch.cat([logits.float(), score], dim=1)  # [B, K + 1]


class Head:
    """What a pipeline's raw model output [B, C] means, how it is trained, decoded and explained.

    Stateless: the class severities [K] are passed to each method (a sequence or a tensor).
    Subclasses set `name` and `summary` and implement `split` and `loss`; the other methods
    have defaults for heads with class logits (`has_classes`) or with a score only.
    """

    name: ClassVar[str] = ""  # stored in run folders; the --head value
    summary: ClassVar[str] = ""  # what it trains, for the --head help
    has_classes: ClassVar[bool] = True  # the output holds class logits (probabilities, class targets)
    weighted: ClassVar[bool] = False  # the loss has a lambda-weighted term (--mse-weight, --mse-warmup)
    smoothable: ClassVar[bool] = False  # cross-entropy on the true class: label smoothing applies (--label-smoothing)

    def n_outputs(self, n_classes: int) -> int:
        """Width of the timm classifier."""
        return n_classes

    def module(self, severities: Sequence[float]) -> nn.Module:
        """The (untrained) module after the timm network: classifier output -> model output."""
        return nn.Identity()

    def check_task(self, task) -> None:
        """Raise `HerlevError` when this head cannot learn `task` (a `herlev_fa.labels.Task`)."""

    def split(self, out: Tensor, severities: Severities) -> tuple[Tensor | None, Tensor]:
        """Model output [B, C] -> (class logits [B, K] or None, severity score [B])."""
        raise NotImplementedError

    def loss(self, out: Tensor, target: Tensor, severities: Severities, mse_weight: float = 1.0,
             smoothing: float = 0.0, reduction: str = "mean") -> tuple[Tensor, dict[str, Tensor]]:
        """Model output [B, C], class indices [B] -> (loss, its detached batch-mean components for logging).

        `smoothing`: label smoothing of the cross-entropy, for heads that are `smoothable` (0 for the others).
        `reduction`: "mean", a scalar; "none", one loss per cell [B] whose mean is the scalar (what
        fastai's MixUp and CutMix mix between a cell's two labels).
        """
        raise NotImplementedError

    def activation(self, out: Tensor, severities: Severities) -> Tensor:
        """fastai's `activation`: output [B, C] -> class probabilities [B, K], or the score [B, 1]."""
        logits, score = self.split(out, severities)
        return score.float()[:, None] if logits is None else logits.float().softmax(dim=1)

    def classify(self, probs: Tensor) -> Tensor:
        """Class probabilities [B, K] -> predicted class index [B] (class heads): the most probable class."""
        return probs.argmax(dim=1)

    def decodes(self, act: Tensor, severities: Severities) -> Tensor:
        """fastai's `decodes`: activation -> predicted class index [B]."""
        return self.classify(act) if self.has_classes else nearest_class(act[:, 0], severities)

    def decode(self, out: Tensor, severities: Severities) -> tuple[Tensor | None, Tensor, Tensor]:
        """Model output [B, C] -> (probabilities [B, K] or None, score [B], predicted class [B])."""
        probs, score, pred = decode_parts(*self.split(out, severities), severities)
        return probs, score, pred if probs is None else self.classify(probs)

    def decode_explained(self, explained: Tensor, severities: Severities) -> tuple[Tensor | None, Tensor, Tensor]:
        """An `explained` output [B, K + 1] or [B, 1] -> (probabilities [B, K] or None, score [B], class [B]),
        as `decode`."""
        logits = explained[:, :-1] if self.has_classes else None  # [B, K] or None
        probs, score, pred = decode_parts(logits, explained[:, -1], severities)
        return probs, score, pred if probs is None else self.classify(probs)

    def average_views(self, outs: Tensor, severities: Severities) -> Tensor:
        """Outputs of V views [V, B, C] -> one output [B, C] in this head's format (test-time augmentation)."""
        return outs.float().mean(dim=0)

    def score_index(self, n_classes: int) -> int:
        """Column of the severity score in `explained` outputs: after the K logits, or the only one."""
        return n_classes if self.has_classes else 0

    def explained(self, out: Tensor, severities: Severities) -> Tensor:
        """Model output [B, C] -> the scalars attribution can explain: [B, K + 1] logits then score, or [B, 1]."""
        logits, score = self.split(out, severities)
        if logits is None:
            return score.float()[:, None]  # [B, 1]
        return torch.cat([logits.float(), score.float()[:, None]], dim=1)  # [B, K + 1]

    def output_names(self, classes: Sequence[str]) -> list[str]:
        """Names of the timm classifier's outputs (`label_names` of the run's config.json)."""
        return list(classes) if self.has_classes else ["severity"]

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self)

    def __hash__(self) -> int:
        return hash(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class _ClassHead(Head):
    """Shared by heads whose output starts with K class logits: TTA averages probabilities."""

    def average_views(self, outs: Tensor, severities: Severities) -> Tensor:
        """Views [V, B, C] -> the mean probabilities p̄ [B, K] as their log, so that softmax gives p̄ back."""
        v, b, _ = outs.shape
        logits, _ = self.split(outs.float().flatten(0, 1), severities)  # [V * B, K]
        log_p = logits.log_softmax(dim=1).view(v, b, -1)  # [V, B, K]
        return torch.logsumexp(log_p, dim=0) - math.log(v)  # [B, K], log of the mean probability, no underflow


HEADS: dict[str, type[Head]] = {}


def register_head(cls: type[Head]) -> type[Head]:
    """Class decorator: make a `Head` subclass available under its `name` (config, CLI, run loading).

    Raises:
        ValueError: no name, or the name is taken by another class.
    """
    if not cls.name or (cls.name in HEADS and HEADS[cls.name] is not cls):
        raise ValueError(f"head class {cls.__name__} needs a name that is not taken (taken: {', '.join(HEADS)})")
    HEADS[cls.name] = cls
    return cls


def head_names() -> tuple[str, ...]:
    """The registered head names, in registration order."""
    return tuple(HEADS)


def get_head(head: str) -> Head:
    """The head object for a name.

    Raises:
        HerlevError: an unknown name.
    """
    if head not in HEADS:
        raise HerlevError(f"unknown head '{head}': choose one of {', '.join(HEADS)}")
    return HEADS[head]()


@register_head
class ClsHead(_ClassHead):
    """Cross-entropy on K class logits; the score is the expected severity of their softmax."""

    name = "cls"
    summary = "cross-entropy"
    smoothable = True

    def split(self, out: Tensor, severities: Severities) -> tuple[Tensor | None, Tensor]:
        return out, expected_severity(out, severities)

    def loss(self, out, target, severities, mse_weight=1.0, smoothing=0.0, reduction="mean"):
        logits, score = self.split(out, severities)
        ce = F.cross_entropy(logits.float(), target, label_smoothing=smoothing, reduction=reduction)
        mse = F.mse_loss(score.float(), _sev(severities, out)[target])  # logged only
        return ce, {"ce": ce.detach().mean(), "mse": mse.detach()}


@register_head
class RegHead(Head):
    """MSE of one output, the severity score, against the true class's severity."""

    name = "reg"
    summary = "MSE on severity"
    has_classes = False

    def n_outputs(self, n_classes: int) -> int:
        return 1

    def check_task(self, task) -> None:
        if not task.has_unique_severities():
            raise HerlevError(f"the reg head needs one class per severity, and task '{task.name}' has classes "
                              "sharing a severity; use --head cls or cls_reg, or --task severity")

    def split(self, out: Tensor, severities: Severities) -> tuple[Tensor | None, Tensor]:
        return None, out[:, 0]

    def loss(self, out, target, severities, mse_weight=1.0, smoothing=0.0, reduction="mean"):
        mse = F.mse_loss(out[:, 0].float(), _sev(severities, out)[target], reduction=reduction)
        return mse, {"mse": mse.detach().mean()}


@register_head
class ClsRegHead(_ClassHead):
    """The regression constraint: CE on the logits + lambda * MSE of their expected severity."""

    name = "cls_reg"
    summary = "CE + lambda*MSE"
    weighted = True
    smoothable = True

    def module(self, severities: Sequence[float]) -> nn.Module:
        return AppendExpectedSeverity(severities)

    def average_views(self, outs: Tensor, severities: Severities) -> Tensor:
        """Views [V, B, K + 1] -> [B, K + 1]: log p̄, then p̄ · severities (the mean of the V scores: linear in p)."""
        log_mean = super().average_views(outs, severities)  # [B, K]
        score = log_mean.exp() @ _sev(severities, log_mean)  # [B]
        return torch.cat([log_mean, score[:, None]], dim=1)  # [B, K + 1]

    def split(self, out: Tensor, severities: Severities) -> tuple[Tensor | None, Tensor]:
        return out[:, :-1], out[:, -1]

    def loss(self, out, target, severities, mse_weight=1.0, smoothing=0.0, reduction="mean"):
        logits, score = self.split(out, severities)
        ce = F.cross_entropy(logits.float(), target, label_smoothing=smoothing, reduction=reduction)
        mse = F.mse_loss(score.float(), _sev(severities, out)[target], reduction=reduction)
        return ce + mse_weight * mse, {"ce": ce.detach().mean(), "mse": mse.detach().mean()}


def corn_log_probs(logits: Tensor) -> Tensor:
    """CORN conditional logits [B, K - 1] -> class log-probabilities log p [B, K], in fp32.

    log P(y > k) = sum_{j <= k} logsigmoid(l_j) (the log of coral-pytorch's cumulative product of
    sigmoids); log p_k = log P(y > k - 1) + logsigmoid(-l_k) for k < K - 1 and log P(y > K - 2)
    for the last class, so that the p_k sum to 1 exactly.
    """
    logits = logits.float()
    log_above = F.logsigmoid(logits).cumsum(dim=1)  # [B, K - 1] log P(y > k)
    return F.pad(log_above, (1, 0)) + F.pad(F.logsigmoid(-logits), (0, 1))  # [B, K]


def corn_logits(log_probs: Tensor) -> Tensor:
    """Class log-probabilities [B, K] -> the CORN conditional logits [B, K - 1] that give them back.

    l_k = log P(y > k) - log p_k, with P(y > k) = sum_{j > k} p_j (the inverse of `corn_log_probs`).
    """
    log_above = torch.logcumsumexp(log_probs.float().flip(1), dim=1).flip(1)[:, 1:]  # [B, K - 1] log P(y > k)
    return log_above - log_probs[:, :-1].float()


def library_loss(loss: Callable[[Tensor, Tensor], Tensor], out: Tensor, target: Tensor, reduction: str) -> Tensor:
    """A library loss that returns the batch mean: "mean" -> that scalar; "none" -> one value per cell [B].

    Per cell, the loss is the library's on a batch of that cell alone (for CORN, whose batch mean
    weighs each cell by its number of binary tasks, the mean of these is the unweighted one).
    """
    if reduction == "mean":
        return loss(out, target)
    return torch.stack([loss(out[i:i + 1], target[i:i + 1]) for i in range(len(target))])  # [B]


class _OrdinalHead(_ClassHead):
    """Shared by the ordinal heads: they learn class ranks, so severities must be distinct and increasing."""

    def check_task(self, task) -> None:
        sev = list(task.severities)
        if not all(a < b for a, b in zip(sev, sev[1:])):
            raise HerlevError(f"the {self.name} head needs classes with distinct severities in increasing order, and "
                              f"task '{task.name}' has severities {sev}; use --head cls or cls_reg, or --task severity")


@register_head
class CornHead(_OrdinalHead):
    """CORN (Shi, Cao & Raschka 2021): K - 1 conditional binary tasks, coral-pytorch's `corn_loss`.

    Output k is the logit of P(y > k | y > k - 1); the class log-probabilities (`corn_log_probs`)
    stand in for class logits (their softmax is p), the class is coral-pytorch's
    `corn_label_from_logits` (the median of p), the score the expected severity under p.
    """

    name = "corn"
    summary = "CORN, conditional ordinal binary tasks"

    def n_outputs(self, n_classes: int) -> int:
        return n_classes - 1

    def split(self, out: Tensor, severities: Severities) -> tuple[Tensor | None, Tensor]:
        log_p = corn_log_probs(out)  # [B, K]
        return log_p, log_p.exp() @ _sev(severities, out)

    def loss(self, out, target, severities, mse_weight=1.0, smoothing=0.0, reduction="mean"):
        loss = library_loss(partial(corn_loss, num_classes=out.shape[1] + 1), out.float(), target, reduction)
        return loss, {"corn": loss.detach().mean()}

    def classify(self, probs: Tensor) -> Tensor:
        """p [B, K] -> the number of k with P(y > k) > 0.5: coral-pytorch's decoding, from probabilities."""
        above = probs.float().flip(1).cumsum(dim=1).flip(1)[:, 1:]  # [B, K - 1] P(y > k)
        return (above > 0.5).sum(dim=1)

    def decode(self, out: Tensor, severities: Severities) -> tuple[Tensor | None, Tensor, Tensor]:
        probs, score, _ = super().decode(out, severities)
        return probs, score, corn_label_from_logits(out.float())

    def average_views(self, outs: Tensor, severities: Severities) -> Tensor:
        """Views [V, B, K - 1] -> the conditional logits [B, K - 1] of the mean probabilities p̄ (`corn_logits`)."""
        return corn_logits(super().average_views(outs, severities))  # log p̄ [B, K] -> [B, K - 1]

    def output_names(self, classes: Sequence[str]) -> list[str]:
        return [f"> {c}" for c in classes[:-1]]


@register_head
class SordHead(_OrdinalHead):
    """SORD (Diaz & Marathe 2019): K class logits, cross-entropy against soft ordinal labels (dlordinal's `SORDLoss`).

    The target of true class y is softmax(-alpha * |k - y|) over the class ranks k; decoded as `cls`.
    """

    name = "sord"
    summary = "SORD soft ordinal labels"
    alpha: ClassVar[float] = 2.0  # the true class keeps ~0.77 of the target (5 classes), each neighbour ~0.10

    def split(self, out: Tensor, severities: Severities) -> tuple[Tensor | None, Tensor]:
        return out, expected_severity(out, severities)

    def loss(self, out, target, severities, mse_weight=1.0, smoothing=0.0, reduction="mean"):
        from dlordinal.losses import SORDLoss  # imports scipy.stats and more: only when training

        # train_targets only feeds SORDLoss's frequency-based proximities (prox=True), not used here
        sord = SORDLoss(alpha=self.alpha, num_classes=out.shape[1], train_targets=target)
        loss = library_loss(sord, out.float(), target, reduction).float()  # the library's soft targets are float64
        return loss, {"sord": loss.detach().mean()}


class SeverityModel(nn.Module):
    """A timm network (`net`, with its classifier) followed by its head's module (`readout`).

    Input float [B, 3, S, S] normalised images; output as in the module table. `head` is the
    `Head` object (what the output means). Only `net` holds trained weights, so
    `net.state_dict()` is the whole checkpoint.
    """

    def __init__(self, net: nn.Module, head: Head, severities: Sequence[float]):
        super().__init__()
        self.net = net
        self.head = head
        self.readout = head.module(severities)

    def forward(self, x: Tensor) -> Tensor:
        return self.readout(self.net(x))

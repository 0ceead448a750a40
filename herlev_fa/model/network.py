"""The network of a run: a timm body with the head's classifier, and the safe loading of weights.

Pretrained weights come from timm's hub download (online users) or a local file (`--weights`);
asking for pretrained weights that cannot be had is an error, never a silent random init.
Local files load without unpickling code: safetensors, or `torch.load(weights_only=True)`.

What does not live here: the fastai Learner that trains the network (`herlev_fa.training.learner`);
loading a run for inference needs torch and timm only.
"""

from __future__ import annotations

import difflib
import pickle
import re
import warnings
from pathlib import Path

import timm
import torch
from torch import Tensor, nn

from herlev_fa.config import ModelConfig
from herlev_fa.errors import HerlevError, missing
from herlev_fa.labels import Task
from herlev_fa.model.heads import SeverityModel, get_head


def check_arch(arch: str) -> None:
    """Raises HerlevError naming close matches when `arch` is not a timm architecture."""
    if timm.is_model(arch) or timm.is_model(arch.split(".")[0]):
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f" (did you mean {', '.join(close)}?)" if close else " (see timm.list_models())"
    raise HerlevError(f"unknown architecture '{arch}'{hint}")


def load_weights_file(path: str | Path) -> dict[str, Tensor]:
    """A state dict from a local weights file, without executing code.

    Accepts `.safetensors`, or a torch file holding a state dict (optionally under `state_dict`,
    `model` or `state_dict_ema`), loaded with `weights_only=True`; `module.` / `net.` prefixes
    (DataParallel, this tool's wrapper) are stripped.

    Raises:
        HerlevError: missing file, a file that would need unpickling code, or not a state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise HerlevError(missing(path, "weights file"))
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(path))
        else:
            with warnings.catch_warnings():  # torch's warnings about the pickle protocol come before our own verdict
                warnings.simplefilter("ignore")
                sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, safetensors errors, RuntimeError on bad zip
        # torch's text advises weights_only=False: the unsafe load refused here
        if isinstance(e, pickle.UnpicklingError):
            if "Unsupported operand" in str(e):  # torch's safe reader knows pickle protocols up to 3 only
                raise HerlevError(f"cannot load weights '{path}' safely: it was written with pickle protocol 4 or "
                                  "higher (torch.save's pickle_protocol), which torch reads only by allowing code in "
                                  "the file to run; save it again with the default protocol, "
                                  "or as .safetensors") from None
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            what = f" ({found.group(1)})" if found else ""
            raise HerlevError(f"cannot load weights '{path}' safely: besides tensors it holds pickled Python "
                              f"objects{what}, and loading those could run code from the file; save the weights "
                              "alone (torch.save(model.state_dict(), PATH)) or as .safetensors") from None
        reason = str(e).strip().split("\n")[0][:200]
        raise HerlevError(f"cannot load weights '{path}' ({type(e).__name__}: {reason}); give a .safetensors file or "
                          "a file written by torch.save(model.state_dict(), PATH)") from None
    for key in ("state_dict_ema", "state_dict", "model"):
        if isinstance(sd, dict) and isinstance(sd.get(key), dict):
            sd = sd[key]
            break
    if not isinstance(sd, dict) or not all(isinstance(v, Tensor) for v in sd.values()):
        raise HerlevError(f"weights file '{path}' does not hold a state dict of tensors")
    for prefix in ("module.", "net."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return sd


def _classifier_keys(net: nn.Module) -> set[str]:
    names = net.pretrained_cfg.get("classifier") or ()
    names = (names,) if isinstance(names, str) else tuple(names)
    return {k for k in net.state_dict() if any(k.startswith(n + ".") for n in names)}


def load_into(net: nn.Module, sd: dict[str, Tensor], source: str, new_classifier: bool = True) -> None:
    """Load `sd` into a timm `net`.

    With `new_classifier` (starting weights), a classifier of another width is dropped and keeps
    its fresh initialisation; without it (a trained run), every tensor must fit exactly.

    Raises:
        HerlevError: the weights are for another architecture (or another classifier width).
    """
    own = net.state_dict()
    clf = _classifier_keys(net) if new_classifier else set()
    sd = {k: v for k, v in sd.items() if not (k in clf and k in own and v.shape != own[k].shape)}
    mismatched = [k for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if mismatched:
        raise HerlevError(f"weights '{source}' do not fit architecture '{net.pretrained_cfg.get('architecture')}': "
                          f"tensor '{mismatched[0]}' has shape {tuple(sd[mismatched[0]].shape)}, "
                          f"expected {tuple(own[mismatched[0]].shape)}")
    missing, unexpected = net.load_state_dict(sd, strict=False)
    missing = [k for k in missing if k not in clf]
    if missing or unexpected:
        example = (missing or unexpected)[0]
        raise HerlevError(f"weights '{source}' do not fit architecture '{net.pretrained_cfg.get('architecture')}': "
                          f"{len(missing)} missing and {len(unexpected)} unexpected tensors (e.g. '{example}')")


def _hub_unreachable(cfg) -> str | None:
    """Why the hub weights of `cfg` cannot be had right now (None: cached, or the hub answers).

    A 3-second probe, so that offline users get the error at once instead of after the hub
    client's minute of retries.
    """
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants, try_to_load_from_cache

    if not cfg.hf_hub_id:
        return None
    repo = cfg.hf_hub_id.split("@")[0]
    if any(isinstance(try_to_load_from_cache(repo, f), str) for f in ("model.safetensors", "pytorch_model.bin")):
        return None
    if constants.HF_HUB_OFFLINE:
        return "HF_HUB_OFFLINE is set and the weights are not in the local cache"
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=3).close()
    except OSError as e:
        return f"{host} is unreachable ({e.strerror or e}) and the weights are not in the local cache"
    return None


def create_net(arch: str, n_out: int, pretrained: bool = False, weights: str | Path | None = None) -> nn.Module:
    """A timm model with an `n_out`-wide classifier, from hub weights, a local file, or random init.

    Raises:
        HerlevError: unknown arch; pretrained weights asked for and unavailable; unusable weights file.
    """
    check_arch(arch)
    if weights is not None:
        net = timm.create_model(arch, pretrained=False, num_classes=n_out)
        load_into(net, load_weights_file(weights), str(weights))
        return net
    if not pretrained:
        return timm.create_model(arch, pretrained=False, num_classes=n_out)
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is not None and not (cfg.hf_hub_id or cfg.url or cfg.file):
        raise HerlevError(f"timm has no pretrained weights for '{arch}': pass --weights FILE or --no-pretrained")
    why = _hub_unreachable(cfg) if cfg is not None else None
    if why:
        raise HerlevError(f"could not get pretrained weights for '{arch}': {why}; "
                          "pass --weights FILE with a local copy, or --no-pretrained to train from scratch")
    try:
        return timm.create_model(arch, pretrained=True, num_classes=n_out)
    except Exception as e:  # hub / network / cache errors of many types
        reason = str(e).strip().split("\n")[0][:160]
        raise HerlevError(f"could not get pretrained weights for '{arch}' ({type(e).__name__}: {reason}); "
                          "pass --weights FILE with a local copy, or --no-pretrained to train from scratch") from None


def build_model(cfg: ModelConfig, task: Task) -> SeverityModel:
    """The network for a task: timm body with a classifier of `head.n_outputs(K)` + the head's module.

    Raises:
        HerlevError: a head that cannot learn the task (`reg` on classes that share a severity:
            the score could not tell them apart).
    """
    head = get_head(cfg.head)
    head.check_task(task)
    net = create_net(cfg.arch, head.n_outputs(task.n_classes), cfg.pretrained, cfg.weights)
    return SeverityModel(net, head, task.severities)


def normalisation(net: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std from the timm model's pretrained config."""
    data_cfg = timm.data.resolve_data_config({}, model=net)
    return tuple(float(m) for m in data_cfg["mean"]), tuple(float(s) for s in data_cfg["std"])

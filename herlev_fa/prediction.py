"""Predict unlabelled images with a trained run: class, class probabilities, severity score, normal/abnormal.

What lives here: finding the images to predict (`find_images`: files and folders, masks
skipped), the dihedral test-time augmentation as pure functions on tensors (`dihedral`,
`dihedral_tta`), and `predict`, which batches the images with the run's own
validation preprocessing (letterbox to the run's size, the run's mean/std: `data.images`) and
returns one row per image. What does not: metrics against true labels (``herlev_fa.evaluation``).

Test-time augmentation (TTA) averages over the 8 elements of the dihedral group D4 (4 rotations,
each with and without a transpose), the same symmetries training draws from (`A.D4`). Class
heads average the class probabilities; the severity score is the expected severity of the
averaged probabilities, which by linearity equals the mean of the 8 scores; `reg` averages the
score. `corn` returns the conditional logits of the averaged probabilities, so that its decoding
(the median class) applies to them as to one view.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from herlev_fa.config import PredictSettings, resolve_device
from herlev_fa.data.images import decode_all, normalise
from herlev_fa.data.items import is_image_file, is_mask_file
from herlev_fa.errors import HerlevError, missing
from herlev_fa.labels import IMAGE_EXTENSIONS
from herlev_fa.metrics import THRESHOLD, abnormal_score, decode, screening_decision
from herlev_fa.model.heads import Head
from herlev_fa.model.inference import fold_batchnorm
from herlev_fa.progress import progress_bar
from herlev_fa.runs import Run, load_run

N_VIEWS = 8  # elements of the dihedral group D4
CHUNK = 1024  # images decoded and held in memory at a time
MANY = 50  # from this many images on, show a progress bar


def dihedral(x: Tensor, k: int) -> Tensor:
    """Element `k` (0..7) of D4 applied to square images [..., S, S]: transposed if k >= 4, then k % 4 quarter turns."""
    if not 0 <= k < N_VIEWS:
        raise ValueError(f"dihedral element {k} is not in 0..7")
    if k >= 4:
        x = x.transpose(-2, -1)
    return torch.rot90(x, k % 4, dims=(-2, -1))


def dihedral_tta(model: Callable[[Tensor], Tensor], x: Tensor, head: Head, severities: Sequence[float]) -> Tensor:
    """Model output averaged over the 8 dihedral views of x [B, 3, S, S] -> raw output [B, C] (`Head.average_views`:
    class heads average probabilities, `reg` its score)."""
    outs = torch.stack([model(dihedral(x, k)) for k in range(N_VIEWS)])  # [8, B, C]
    return head.average_views(outs, severities)


def _walk(folder: Path) -> list[Path]:
    """Image files under `folder`, recursively, sorted; hidden files and folders skipped."""
    found = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder).parts
        if any(part.startswith(".") for part in rel) or not path.is_file():
            continue
        if is_image_file(path):
            found.append(path)
    return found


def find_images(inputs: Sequence[str | Path], skip_bad: bool = False) -> list[Path]:
    """The image files named by `inputs` (files, or folders searched recursively), in order, without duplicates.

    Masks (`-d.bmp`, `-d.png`) are skipped: silently inside folders, with a warning when named.

    Raises:
        HerlevError: nothing given, a missing path, a folder without images, a named file that
            is not an image (with `skip_bad`: warned and skipped), or no image at all.
    """
    if not inputs:
        raise HerlevError("no image or folder given: pass image files or a folder of images")
    paths: list[Path] = []
    for given in map(Path, inputs):
        if given.is_dir():
            found = _walk(given)
            if not found:
                raise HerlevError(f"folder '{given}' holds no image (extensions: {', '.join(IMAGE_EXTENSIONS)})")
            paths += found
        elif given.is_file():
            if is_mask_file(given):
                warnings.warn(f"skipped '{given}': a segmentation mask, not a cell image", stacklevel=2)
            elif is_image_file(given):
                paths.append(given)
            elif skip_bad:
                warnings.warn(f"skipped '{given}': not an image file", stacklevel=2)
            else:
                raise HerlevError(f"'{given}' is not an image file (extensions: {', '.join(IMAGE_EXTENSIONS)}); "
                                  "remove it, or pass --skip-bad to skip it")
        else:
            raise HerlevError(missing(given, ""))
    unique = list(dict.fromkeys(paths))  # a file named twice, or inside a named folder too, is predicted once
    if not unique:
        raise HerlevError("no image to predict: every file given was skipped")
    return unique


def _chunks(items: list, n: int) -> Iterator[list]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def predict_outputs(run: Run, paths: Sequence[str], tta: bool = False, bs: int = 64, device: str = "cpu",
                    skip_bad: bool = False, progress: bool = True) -> tuple[np.ndarray, list[str]]:
    """Raw model outputs [N, C] for image files, with the run's validation preprocessing.

    Images are decoded `CHUNK` at a time, so memory does not grow with the number of images.

    Returns:
        The outputs, and the paths they belong to (unreadable ones dropped with `skip_bad`).
    """
    model = fold_batchnorm(run.model.to(device).eval(), run.size)  # same outputs, no BatchNorm to run
    outputs: list[Tensor] = []
    kept: list[str] = []
    try:
        bar, advance = progress_bar(progress and len(paths) >= MANY, "predicting", len(paths))
        with bar, torch.inference_mode():
            for chunk in _chunks(list(paths), CHUNK):
                cache, bad = decode_all(chunk, run.size, skip_bad=skip_bad, progress=False)
                good = [p for p in chunk if p in cache]
                advance(len(bad))
                for batch in _chunks(good, bs):
                    u8 = torch.from_numpy(np.stack([cache[p] for p in batch])).to(device)  # [B, S, S, 3] uint8
                    x = normalise(u8, run.mean, run.std)  # [B, 3, S, S], as the training feed's validation batches
                    out = dihedral_tta(model, x, run.head, run.task.severities) if tta else model(x)
                    outputs.append(out.float().cpu())
                    advance(len(batch))
                kept += good
    finally:
        run.model.cpu()  # a Run keeps its model on the CPU
    if not outputs:
        raise HerlevError("no image could be read: nothing to predict")
    return torch.cat(outputs).numpy(), kept


def prediction_table(out: np.ndarray, paths: Sequence[str], run: Run, threshold: float = THRESHOLD,
                     temperature: float = 1.0) -> pd.DataFrame:
    """Raw outputs [N, C] -> one row per image.

    Columns: path, pred, p_<class>... (class heads), score, abnormal (the screening call:
    `screening_decision` of P(abnormal), or of the score for `reg`, at `threshold`),
    abnormal_prob (class heads) and pred_abnormal (the predicted class is abnormal: the poster's
    binary call, which can disagree with `abnormal` when the abnormal classes split their mass).
    `temperature`: of `calibration.scale_probabilities` (1: the model's own probabilities).
    """
    probs, score, pred = decode(out, run.head, run.task.severities)
    if probs is not None and temperature != 1.0:
        from herlev_fa.calibration import scale_probabilities

        probs = scale_probabilities(probs, temperature)  # same order, so the same predicted class
    abnormal = np.asarray(run.task.abnormal())  # [K] per class
    frame = pd.DataFrame({"path": [str(p) for p in paths], "pred": [run.task.classes[i] for i in pred]})
    if probs is not None:
        for i, cls in enumerate(run.task.classes):
            frame[f"p_{cls}"] = probs[:, i]
    frame["score"] = score
    frame["abnormal"] = screening_decision(abnormal_score(probs, score, run.task.severities), threshold)
    if probs is not None:
        frame["abnormal_prob"] = probs[:, abnormal].sum(axis=1)
    frame["pred_abnormal"] = abnormal[pred]
    return frame


def predict(run: str | Path | Run, inputs: str | Path | Sequence[str | Path],
            settings: PredictSettings | None = None) -> pd.DataFrame:
    """Predict image files, or every image in folders, with a trained run (`PredictSettings`).

    Args:
        run: a run folder (holds herlev.json), a cross-validated run's folder, or a loaded `Run`.
        inputs: image files (.bmp/.jpg/.png/.tif, any size and mode) and folders (searched
            recursively; masks `-d.bmp`/`-d.png` skipped); one path or a sequence of them.
        settings: `tta` averages over the 8 dihedral views (see the module docstring);
            `skip_bad` warns about and skips unreadable images instead of stopping; `threshold`
            is the screening call's: a number, None (0.5), or an operating point the run
            recorded on its held-out fold (`spec95`, `sens95`; see `Run.screening_threshold`);
            `calibrated` scales the probabilities by the temperature `herlev calibrate` fitted
            (``herlev_fa.calibration``; the predicted class does not change).

    Returns:
        One row per image, in input order: `path`, `pred` (class), `p_<class>` for every class
        (class heads; they sum to 1), `score` (severity), `abnormal` (the screening call:
        `abnormal_prob` >= threshold; for `reg` the score), `abnormal_prob` (sum of the abnormal
        classes' probabilities; class heads) and `pred_abnormal` (the predicted class has
        severity > 0: the poster's binary call). `attrs["threshold"]`: the threshold used.

    Raises:
        HerlevError: bad run folder, missing input, folder without images, unreadable image, no GPU.
    """
    settings = settings or PredictSettings()
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    run = load_run(run)
    cut = run.screening_threshold(settings.threshold)
    temperature = 1.0
    if settings.calibrated:
        from herlev_fa.calibration import run_temperature

        temperature = run_temperature(run.path)
    device = resolve_device(settings.device)
    paths = [str(p) for p in find_images(inputs, skip_bad=settings.skip_bad)]
    out, kept = predict_outputs(run, paths, tta=settings.tta, bs=settings.bs, device=device,
                                skip_bad=settings.skip_bad, progress=settings.progress)
    table = prediction_table(out, kept, run, cut, temperature)
    table.attrs["threshold"] = cut  # the number a named operating point resolved to
    return table

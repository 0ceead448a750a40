"""Export a run's model for deployment: ONNX, checked against onnxruntime before it is kept.

What lives here: `export_onnx`, which writes `model.onnx` (input `image` [B, 3, S, S] float32
as `herlev_fa.preprocess` makes it, output `output` [B, C], the raw output herlev decodes; the
batch size is free), with the run's classes, severities, head, size and normalisation in the
ONNX metadata, then runs it with onnxruntime on real cells and refuses it if its outputs differ
from the run's. What does not: decoding outputs (see ``herlev_fa.model.heads``: class heads
take softmax of the first K columns; `cls_reg`'s last column is the severity score; `reg`'s one
column is the score).

Needs the optional extra: `pip install "herlev_fa[onnx]"` (onnx, onnxruntime, onnxscript).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from herlev_fa.errors import HerlevError

FORMATS = ("onnx",)
CHECK_CELLS = 16  # held-out cells run through both the run and the exported model
TOLERANCE = 1e-4  # largest |difference| of outputs accepted, relative to 1 + max |output|


@dataclass
class ExportResult:
    """What `export_onnx` wrote and how it was checked."""

    path: Path
    checked: int  # images run through both models
    source: str  # what they were
    max_difference: float  # largest |ONNX output - run output|


def _needs(package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise HerlevError(f"ONNX export needs the package '{package}': pip install \"herlev_fa[onnx]\" "
                          "(onnx, onnxruntime, onnxscript)")


def _check_images(run, images) -> tuple[np.ndarray, str]:
    """The images [B, 3, S, S] of the check: the given files, else the run's held-out cells, else seeded noise."""
    from herlev_fa.data.images import preprocess

    config = {"input_size": [3, run.size, run.size], "mean": list(run.mean), "std": list(run.std)}
    if images:
        return preprocess(list(images), config).numpy(), f"{len(images)} given image(s)"
    try:
        from herlev_fa.evaluation import held_out_items

        paths = list(held_out_items(run)["path"])[:CHECK_CELLS]
        return preprocess(paths, config).numpy(), f"{len(paths)} held-out cells of the run"
    except HerlevError:  # an ensemble (no held-out fold) or a moved data root: still check the numbers
        noise = np.random.default_rng(0).normal(size=(4, 3, run.size, run.size)).astype(np.float32)
        return noise, "4 random inputs (no held-out cells found)"


def export_onnx(run_dir, out: str | Path | None = None, images=None, opset: int = 18) -> ExportResult:
    """Write the run's model as ONNX and check it against the run on cells with onnxruntime.

    Args:
        run_dir: a run folder (or a cross-validated run's folder: the ensemble), or a loaded `Run`.
        out: the .onnx file (default RUN/model.onnx).
        images: image files for the check (default: up to 16 of the run's held-out cells).

    Raises:
        HerlevError: the optional packages are missing, the export fails, or the exported
            model's outputs differ from the run's by more than float rounding.
    """
    for package in ("onnx", "onnxruntime", "onnxscript"):
        _needs(package)
    import onnx
    import onnxruntime
    import torch

    from herlev_fa.atomic import atomic_path
    from herlev_fa.runs import load_run

    run = load_run(run_dir)
    target = Path(out) if out is not None else run.path / "model.onnx"
    model = run.model.eval()
    example = torch.zeros(2, 3, run.size, run.size)  # [B, 3, S, S]; B is exported as free
    batch = torch.export.Dim("batch", min=1, max=4096)
    try:
        program = torch.onnx.export(model, (example,), dynamo=True, input_names=["image"], output_names=["output"],
                                    dynamic_shapes=({0: batch},), opset_version=opset, verbose=False)
        proto = program.model_proto
    except Exception as e:  # the exporter raises many kinds
        raise HerlevError(f"ONNX export of run '{run.path}' failed: {str(e).splitlines()[0]}") from None
    meta = {"herlev_head": run.head.name, "herlev_classes": json.dumps(list(run.task.classes)),
            "herlev_severities": json.dumps(list(run.task.severities)), "herlev_image_size": str(run.size),
            "herlev_mean": json.dumps(list(run.mean)), "herlev_std": json.dumps(list(run.std)),
            "herlev_input": "herlev_fa.preprocess(images, config): letterboxed, normalised [B, 3, S, S] float32"}
    onnx.helper.set_model_props(proto, meta)
    with atomic_path(target) as tmp:
        onnx.save(proto, str(tmp))
    x, source = _check_images(run, images)
    session = onnxruntime.InferenceSession(str(target), providers=["CPUExecutionProvider"])
    got = session.run(["output"], {"image": x})[0]  # [B, C]
    with torch.no_grad():
        want = model(torch.from_numpy(x)).float().numpy()  # [B, C]
    difference = float(np.abs(got - want).max())
    if got.shape != want.shape or difference > TOLERANCE * (1 + float(np.abs(want).max())):
        target.unlink(missing_ok=True)
        raise HerlevError(f"the exported model's outputs differ from the run's on {source} (max |difference| "
                          f"{difference:.2g}); it was not kept")
    return ExportResult(target, len(x), source, difference)

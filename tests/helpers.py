"""Small builders for test data (image files in any mode, Herlev-style folders), figure checks, and ways to run
the CLI or a script without a new interpreter (`killed_cli`, `run_script`)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from herlev_fa.explanation.masks import CYTOPLASM, NUCLEUS
from herlev_fa.labels import BACKGROUND_RGB, CYTOPLASM_RGB, NUCLEUS_RGB


def write_image(path: Path, h: int = 20, w: int = 24, mode: str = "RGB", value: int = 120) -> Path:
    """An image file of the given PIL mode, filled with `value` (plus a gradient so it is not flat)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    base = (np.arange(h * w).reshape(h, w) % 50 + value).astype(np.uint8)
    if mode == "RGB":
        img = Image.fromarray(np.stack([base] * 3, axis=2))
    elif mode == "RGBA":
        img = Image.fromarray(np.dstack([base, base, base, np.full_like(base, 128)]), "RGBA")
    elif mode == "L":
        img = Image.fromarray(base, "L")
    elif mode == "I;16":
        img = Image.fromarray(base.astype(np.uint16) * 257)  # 16-bit: full-range copy of `base`
    elif mode == "P":
        img = Image.fromarray(np.stack([base] * 3, axis=2)).convert("P", palette=Image.Palette.ADAPTIVE)
    else:
        raise ValueError(mode)
    fmt = {".bmp": "BMP", ".jpg": "JPEG", ".jpeg": "JPEG", ".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF"}
    img.save(path, format=fmt[path.suffix.lower()])
    return path


def write_mask(path: Path, h: int = 20, w: int = 24, nucleus: tuple[int, int, int, int] = (5, 5, 10, 10)) -> Path:
    """A mask in the archive colours: background, a cytoplasm rectangle, a nucleus box (y0, x0, y1, x1)."""
    rgb = np.zeros((h, w, 3), np.uint8)
    rgb[:] = BACKGROUND_RGB
    rgb[2:h - 2, 2:w - 2] = CYTOPLASM_RGB
    y0, x0, y1, x1 = nucleus
    rgb[y0:y1, x0:x1] = NUCLEUS_RGB
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path, format="BMP" if path.suffix.lower() == ".bmp" else "PNG")
    return path


def herlev_folder(root: Path, per_class: int = 4, folders: dict[str, int] | None = None, ext: str = ".BMP") -> Path:
    """A tiny Herlev-layout folder: `folders` maps folder name -> image count (masks beside each)."""
    folders = folders or {f: per_class for f in ("normal_superficiel", "normal_intermediate", "normal_columnar",
                                                  "light_dysplastic", "moderate_dysplastic", "severe_dysplastic",
                                                  "carcinoma_in_situ")}
    for folder, n in folders.items():
        for i in range(n):
            write_image(root / folder / f"{folder[:3]}{i}{ext}", value=10 * i)
            write_mask(root / folder / f"{folder[:3]}{i}-d.bmp")
    return root


def nucleus_share(regions: np.ndarray) -> float:
    """N / (N + C) of [H, W] region codes (the archive's K/C feature); 0 without cell pixels."""
    n, c = np.count_nonzero(regions == NUCLEUS), np.count_nonzero(regions == CYTOPLASM)
    return n / (n + c) if n + c else 0.0


def drawn_png(path: Path, width: tuple[int, int], height: tuple[int, int], colours: tuple = ()) -> np.ndarray:
    """Decode a written figure and check it is drawn: size within the (min, max) pixel ranges, not blank
    (contrast, many distinct colours) and holding each RGB of `colours` (a plot element's colour). Returns [H, W, 3]."""
    with Image.open(path) as image:
        assert image.format == "PNG", f"{path} is {image.format}, not PNG"
        rgb = np.asarray(image.convert("RGB"))
    h, w = rgb.shape[:2]
    assert width[0] <= w <= width[1] and height[0] <= h <= height[1], f"{path.name} is {w}x{h} px"
    assert rgb.std() > 15, f"{path.name} is nearly blank (pixel std {rgb.std():.1f})"
    distinct = len(np.unique(rgb.reshape(-1, 3), axis=0))
    assert distinct >= 30, f"{path.name} has only {distinct} distinct colours"
    for colour in colours:
        assert (np.abs(rgb.astype(int) - colour).max(axis=2) <= 2).any(), f"{path.name} has no pixel of colour {colour}"
    return rgb


def text_inside(rgb: np.ndarray, margin: int = 3) -> None:
    """Nothing drawn touches the image's edges (a clipped title or label would): the outer `margin` pixels are white."""
    edges = np.concatenate([rgb[:margin].reshape(-1, 3), rgb[-margin:].reshape(-1, 3),
                            rgb[:, :margin].reshape(-1, 3), rgb[:, -margin:].reshape(-1, 3)])
    dark = int((edges.min(axis=1) < 235).sum())
    assert dark == 0, f"{dark} drawn pixels touch the edge of the image: something is cut off"


def killed_cli(args: list[str], when=None, epoch: int | None = None, timeout: float = 240) -> bool:
    """Run the CLI `args` in a fork of this process (torch and fastai are imported already: no 5 s start), on one
    thread as a subprocess under OMP_NUM_THREADS=1 would, and SIGKILL it from outside:

    - `epoch=k`: once its training reaches the middle batch of the k-th training epoch (counted from 0 over every
      fit), where the fork waits for the kill: a kill at a known batch;
    - `when`: as soon as `when()` holds (polled every 20 ms): a kill at whatever the run is doing then.

    Returns True if it was killed before it finished (with `epoch`, a run that ends first fails the test).
    """
    import os
    import select
    import signal
    import time

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(read)
            import torch
            from typer.testing import CliRunner

            from herlev_cli.main import app

            torch.set_num_threads(1)
            if epoch is not None:
                _stop_in_epoch(epoch, write)
            code = CliRunner().invoke(app, args).exit_code
        finally:
            os._exit(code)
    os.close(write)
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if epoch is not None:
                ready, _, _ = select.select([read], [], [], 0.02)
                if ready:
                    if not os.read(read, 1):  # end of file: the child finished without reaching the batch
                        code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
                        pid = 0
                        raise AssertionError(f"the run ended (exit {code}) before training epoch {epoch}: {args}")
                    os.kill(pid, signal.SIGKILL)
                    return True
            else:
                if os.waitpid(pid, os.WNOHANG)[0]:
                    pid = 0
                    return False
                if when():
                    os.kill(pid, signal.SIGKILL)
                    return True
                time.sleep(0.02)
        raise AssertionError(f"the run neither finished nor got where it is killed within {timeout} s")
    finally:
        os.close(read)
        if pid:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            os.waitpid(pid, 0)


def _stop_in_epoch(epoch: int, pipe: int) -> None:
    """Make every Learner the trainer builds stop in the middle of training epoch `epoch` and write to `pipe`."""
    import os
    import time

    from fastai.callback.core import Callback

    from herlev_fa.training import loop

    class StopInEpoch(Callback):
        seen = -1

        def before_train(self):
            StopInEpoch.seen += 1

        def after_batch(self):
            if self.training and StopInEpoch.seen == epoch and self.iter == len(self.dl) // 2:
                os.write(pipe, b"x")
                while True:
                    time.sleep(60)  # until the SIGKILL

    build = loop.build_learner

    def build_stopping(*args, **kwargs):
        learn = build(*args, **kwargs)
        learn.add_cb(StopInEpoch())
        return learn

    loop.build_learner = build_stopping


def run_script(path: Path, *args: str) -> str:
    """`python path args` in this process (no 5 s interpreter start): the script runs as `__main__` with that
    argv; returns what it printed. A non-zero exit fails with its output."""
    import contextlib
    import io
    import runpy
    import sys

    out, argv = io.StringIO(), sys.argv
    sys.argv = [str(path), *map(str, args)]
    try:
        with contextlib.redirect_stdout(out):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as e:
        assert e.code in (0, None), f"{path.name} exited with {e.code}:\n{out.getvalue()[-3000:]}"
    finally:
        sys.argv = argv
    return out.getvalue()

"""Speed of herlev's Integrated Gradients against plain captum: same model, same images, same run.

What it measures, in milliseconds per image (best of `--repeats`, configurations interleaved so
that a busy machine slows them alike), with each configuration's convergence delta:

* plain captum, default settings: `IntegratedGradients(model).attribute(x, baselines=0,
  target=t, return_convergence_delta=True)` (50 Gauss-Legendre steps, no internal batching),
  called on the same batches of `--bs` images;
* plain captum with `internal_batch_size` swept (the best of these is "best plain captum");
* herlev's `Explainer` (what `explain` and `quantify` call; BatchNorm folded into the convs):
  fp32 and bf16 autocast, at `--steps` and at fewer steps, and once with BatchNorm kept;
  the midpoint rule (`riemann_middle`) at `--steps` and fewer,
  so that the fastest setting whose mean |delta| is no larger
  than plain captum's can be read off;
* `explain` and `quantify` end to end (file decoding, letterbox, maps back to the input grid,
  mask overlap) on the same images written as a Herlev-layout folder, each with its ratio to
  the attribution core (herlev fp32 at `--steps`) and the time per image spent outside the
  attribution call (the end-to-end wall time minus the `Explainer`'s own clock): what the
  device waits for. `quantify` is also run on half of the images, which splits its outside time
  into a cost per image and a cost per call (its csv, summary and figure, written once).
  The issue's CPU proxy: `--size 224 --e2e-only`, goal <= 3 ms/image.
* with `--methods`: every other attribution method (`--method` of the commands, default
  settings) on the same batches, with its time per image as a ratio to IG's (fp32, `--steps`).

It prints the ratios: plain captum default / ours, best plain captum / ours, both at equal or
smaller mean |delta|. Defaults: `test_resnet` at 64 px on the CPU; `resnet101` at 224 px,
50 steps on CUDA, trained for a few epochs on synthetic cells unless `--run` gives a run
(speed does not depend on the weights; the delta does).

    .venv/bin/python bench/ig.py                      # CPU
    .venv/bin/python bench/ig.py --device cuda        # GPU: resnet101, 224 px, 50 steps
    .venv/bin/python bench/ig.py --run runs/r --json bench.json
    .venv/bin/python bench/ig.py --size 224 --e2e-only  # CPU: the time outside the attribution call
    .venv/bin/python bench/ig.py --size 224 --e2e-only --methods  # and each method's time beside IG's
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _card(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(0)
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def build(args, device: str):
    """The run (`--run`, or a model trained briefly on synthetic cells), and the benchmark images.

    A model trained for a few epochs gives the convergence deltas meaning: a random-init network
    is nearly constant, so every setting's delta is ~0. Speed does not depend on the weights.

    Returns:
        The run, letterboxed uint8 images [N, S, S, 3], the images (and masks) as a Herlev-layout
        folder, the first half of them as another, the image paths.
    """
    import herlev_fa
    from herlev_fa.data.images import letterbox
    from herlev_fa.data.images import load_image
    from herlev_fa.data.items import scan
    from herlev_fa.runs import load_run

    scratch = Path(tempfile.mkdtemp(prefix="herlev_bench_"))
    size = load_run(args.run).size if args.run else args.size
    data = herlev_fa.write_synthetic(scratch / "data", per_class=max(30, -(-args.images // 7)), size=max(64, size),
                                     seed=0)
    if args.run:
        run = load_run(args.run)
    else:
        cfg = herlev_fa.TrainConfig(herlev_fa.DataConfig(data, size=size, bs=32, seed=0),
                                    herlev_fa.ModelConfig(args.arch, pretrained=False), epochs=args.epochs, lr=3e-3,
                                    device=device, out=scratch / "runs", name="bench", quiet=True)
        started = time.perf_counter()
        run = load_run(herlev_fa.train(cfg).runs[0])
        seconds = time.perf_counter() - started
        print(f"trained {args.arch} for {args.epochs} epochs on synthetic cells in {seconds:.0f} s")
    items = scan(data, run.task)
    items = items.sample(n=min(args.images, len(items)), random_state=0)  # every class, in a fixed order
    subset, half = scratch / "subset", scratch / "half"  # the same images (and masks) in Herlev layout, for quantify
    for i, (path, mask) in enumerate(zip(items["path"], items["mask"])):
        for folder in (subset, half) if i < len(items) // 2 else (subset,):
            for f in (Path(path), Path(mask)):
                (folder / f.parent.name).mkdir(parents=True, exist_ok=True)
                shutil.copy(f, folder / f.parent.name / f.name)
    boxed = np.stack([letterbox(run.size)(image=load_image(p))["image"] for p in items["path"]])
    return run, boxed, subset, half, list(items["path"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--run", default=None, help="A trained run folder (default: random-init --arch).")
    parser.add_argument("--arch", default=None, help="Default: test_resnet on CPU, resnet101 on CUDA.")
    parser.add_argument("--size", type=int, default=None, help="Default: 64 on CPU, 224 on CUDA.")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--images", type=int, default=None, help="Default: 32 on CPU, 64 on CUDA.")
    parser.add_argument("--epochs", type=int, default=None, help="Training epochs without --run (15 CPU, 5 CUDA).")
    parser.add_argument("--bs", type=int, default=8, help="Images per attribute call (all configurations).")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", default=None, help="Also write the figures here.")
    parser.add_argument("--e2e-only", action="store_true",
                        help="Only plain captum's default, herlev's default and the two end-to-end rows (quick, e.g. "
                             "at --size 224 on the CPU).")
    parser.add_argument("--methods", action="store_true",
                        help="Also time every other attribution method (default settings) beside IG.")
    args = parser.parse_args()

    from captum.attr import IntegratedGradients

    from herlev_fa.config import resolve_device
    from herlev_fa.config import ATTRIBUTION_METHODS, IGSettings
    from herlev_fa.explanation.attribution import (DEFAULT_RULE, ExplainedOutputs, Explainer, explainer_for,
                                                   iter_explanations, normalise)
    from herlev_fa.explanation.report import quantify

    device = resolve_device(args.device)
    cuda = device.startswith("cuda")
    args.arch = args.arch or ("resnet101" if cuda else "test_resnet")
    args.size = args.size or (224 if cuda else 64)
    args.images = args.images or (64 if cuda else 32)
    args.epochs = args.epochs or (5 if cuda else 15)
    warnings.filterwarnings("ignore", category=UserWarning)  # captum's batching notes, unconverged warnings

    run, boxed, data, half, paths = build(args, device)
    model = run.model.to(device).eval()
    outputs = ExplainedOutputs(model, run.head, run.task.severities).to(device).eval()
    batches = [boxed[i:i + args.bs] for i in range(0, len(boxed), args.bs)]
    xs = [normalise(b, run.mean, run.std).to(device) for b in batches]  # [bs, 3, S, S] each
    with torch.no_grad():
        targets = [outputs(x)[:, :-1].argmax(1) if run.head.has_classes else torch.zeros(len(x), dtype=torch.long,
                                                                                       device=device) for x in xs]
    plain = IntegratedGradients(outputs)

    def plain_captum(ibs: int | None):
        def call():
            deltas = []
            for x, t in zip(xs, targets):
                _, d = plain.attribute(x, baselines=torch.zeros_like(x), target=t, n_steps=args.steps,
                                       internal_batch_size=ibs, return_convergence_delta=True)
                deltas.append(d.detach().abs().float().cpu())
            return torch.cat(deltas).numpy()
        return call

    def ours(steps: int, precision: str = "fp32", fold_bn: bool = True, rule: str = DEFAULT_RULE):
        explainer = Explainer(run.model, run.head, run.task.classes, run.task.severities, run.mean, run.std,
                              run.size, steps=steps, baseline="mean", device=device, precision=precision,
                              fold_bn=fold_bn, rule=rule)

        def call():
            return np.concatenate([np.abs(explainer(b).delta) for b in batches])
        call.explainer = explainer  # what auto chose, read after the runs
        return call

    def method(name: str):
        explainer = Explainer(run.model, run.head, run.task.classes, run.task.severities, run.mean, run.std,
                              run.size, steps=args.steps, baseline="mean", device=device, precision="fp32",
                              method=name)

        def call():
            return np.concatenate([np.abs(explainer(b).delta) for b in batches])  # NaN: no delta
        return call

    configs: dict[str, object] = {} if args.e2e_only else {"plain captum default": plain_captum(None)}
    if args.e2e_only:
        configs[f"herlev fp32 {args.steps} steps"] = ours(args.steps)
    for k in [] if args.e2e_only else (1, 4, 8, 16, 32):
        ibs = args.bs * k
        if k < args.steps:
            configs[f"plain captum ibs={ibs}"] = plain_captum(ibs)
    if not args.e2e_only:
        configs[f"herlev fp32 {args.steps} steps, BN not folded"] = ours(args.steps, fold_bn=False)
        configs[f"herlev auto {args.steps} steps (default)"] = ours(args.steps, "auto")  # bf16 if its delta allows
        for steps in [args.steps, *(s for s in (32, 24, 16) if s < args.steps)]:
            configs[f"herlev fp32 {steps} steps"] = ours(steps)
            configs[f"herlev bf16 {steps} steps"] = ours(steps, "bf16")
        for steps in [args.steps, *(s for s in (40, 36, 32) if s < args.steps)]:
            configs[f"herlev fp32 midpoint {steps} steps"] = ours(steps, rule="riemann_middle")
    others = [m for m in ATTRIBUTION_METHODS if m != "ig"] if args.methods else []
    for m in others:
        configs[f"method {m}"] = method(m)

    n = len(boxed)
    times: dict[str, list[float]] = {k: [] for k in configs}
    deltas: dict[str, float] = {}
    out_of_memory = set()
    for name, call in configs.items():  # warm-up (cudnn autotune, allocator), and the deltas
        try:
            deltas[name] = float(call().mean())
        except torch.cuda.OutOfMemoryError:
            times[name], deltas[name] = [], float("nan")
            out_of_memory.add(name)
            torch.cuda.empty_cache()
    for _ in range(args.repeats):
        for name, call in configs.items():
            if name in out_of_memory:
                continue
            _sync(device)
            start = time.perf_counter()
            call()
            _sync(device)
            times[name].append((time.perf_counter() - start) * 1000 / n)

    settings = IGSettings(steps=args.steps, device=device, bs=args.bs, precision="fp32")  # as the core row

    def e2e_explain(explainer) -> int:
        return sum(1 for _ in iter_explanations(run, paths, settings, explainer=explainer))

    def e2e_quantify(explainer, folder: Path = data) -> int:
        return len(quantify(run, data=folder, split="all", out=data.parent / "q", settings=settings, progress=False,
                            explainer=explainer).table)

    def timed(call) -> tuple[float, float, int]:
        """Best of --repeats, each on its own: (seconds, seconds outside the attribution calls, images)."""
        call(explainer_for(run, settings))  # warm-up
        totals, outsides = [], []
        for _ in range(args.repeats):
            explainer = explainer_for(run, settings)  # its clock counts the attribution calls only
            _sync(device)
            start = time.perf_counter()
            count = call(explainer)
            _sync(device)
            totals.append(time.perf_counter() - start)
            outsides.append(totals[-1] - explainer.attribution_seconds)
        return min(totals), min(outsides), count

    e2e, outside = {}, {}
    for name, call in (("explain (files in, maps out)", e2e_explain),
                       ("quantify (files + masks in, shares out)", e2e_quantify)):
        total, off_all, count_all = timed(call)
        e2e[name], outside[name] = total * 1000 / count_all, off_all * 1000 / count_all
    # quantify writes its csv, summary and figure once per call: the outside time of all images (the last
    # row above) and of half of them give the cost per image (the slope) and the cost per call (the rest)
    _, off_half, count_half = timed(lambda explainer: e2e_quantify(explainer, half))
    per_image_outside = (off_all - off_half) * 1000 / (count_all - count_half)
    per_call_outside = off_all * 1000 - per_image_outside * count_all

    best_ms = {k: min(v) for k, v in times.items() if v}
    base = "plain captum default"
    ours_default = f"herlev fp32 {args.steps} steps"

    print(f"\nIG benchmark: {args.arch} at {args.size} px, {args.steps} steps, {n} images in batches of {args.bs}, "
          f"device {device} ({_card(device)}), torch {torch.__version__}")
    print(f"{'configuration':<44} {'ms/image':>10} {'mean |delta|':>14}")
    for name in configs:
        ms = f"{best_ms[name]:.2f}" if name in best_ms else "OOM"
        print(f"{name:<44} {ms:>10} {deltas[name]:>14.4g}")
    for name, ms in e2e.items():
        print(f"{name:<44} {ms:>10.2f} {'':>14}")
    auto = next((c.explainer for name, c in configs.items() if name.startswith("herlev auto")), None)
    if auto is not None:
        tried = ", ".join(f"{p} {d:.4g}" for p, d in (auto.auto_deltas or {}).items()) or "not tried on this device"
        print(f"auto chose {auto.used} (first batch's mean |delta|: {tried})")
    print()
    core = best_ms[ours_default]
    for name, ms in e2e.items():
        print(f"{name.split()[0]}: {ms:.2f} ms/image end to end, {ms / core:.2f}x the attribution core "
              f"({core:.2f}); outside the attribution call {outside[name]:.2f} ms/image")
    print(f"quantify outside the attribution call: {per_image_outside:.2f} ms per image + {per_call_outside:.0f} ms "
          f"per call (its csv, summary and figure; {count_half} and {count_all} images)")
    for m in others:
        ms = best_ms.get(f"method {m}")
        if ms is not None:
            print(f"{m}: {ms:.2f} ms/image, {ms / core:.3f}x IG's ({args.steps} steps, fp32)")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "arch": args.arch, "size": args.size, "steps": args.steps, "images": n, "bs": args.bs, "device": device,
            "card": _card(device), "torch": torch.__version__, "ms_per_image": best_ms, "mean_abs_delta": deltas,
            "end_to_end_ms_per_image": e2e, "outside_attribution_ms_per_image": outside,
            "quantify_outside_ms": {"per_image": per_image_outside, "per_call": per_call_outside},
            "end_to_end_over_core": {k: v / best_ms[ours_default] for k, v in e2e.items()},
        }, indent=2))
    plains = {k: v for k, v in best_ms.items() if k.startswith("plain")}
    if not plains:  # --e2e-only
        return
    best_plain = min(plains, key=plains.get)
    ref_delta = deltas[base] if not np.isnan(deltas[base]) else deltas[best_plain]
    ours_ok = {k: v for k, v in best_ms.items() if k.startswith("herlev") and deltas[k] <= ref_delta * 1.0001}
    print(f"best plain captum: {best_plain} ({best_ms[best_plain]:.2f} ms/image)")
    if base in best_ms:
        print(f"ratio plain captum default / herlev ({args.steps} steps, fp32): "
              f"{best_ms[base] / best_ms[ours_default]:.2f}x")
    unfolded = f"herlev fp32 {args.steps} steps, BN not folded"
    if unfolded in best_ms:
        print(f"ratio herlev BatchNorm kept / folded ({args.steps} steps, fp32): "
              f"{best_ms[unfolded] / best_ms[ours_default]:.2f}x")
    print(f"ratio best plain captum / herlev ({args.steps} steps, fp32): "
          f"{best_ms[best_plain] / best_ms[ours_default]:.2f}x")
    if ours_ok:
        fastest = min(ours_ok, key=ours_ok.get)
        print(f"fastest herlev setting with mean |delta| <= plain captum's ({ref_delta:.4g}): {fastest}, "
              f"{best_ms[best_plain] / ours_ok[fastest]:.2f}x faster than best plain captum")
    else:
        print(f"no herlev setting reached plain captum's mean |delta| ({ref_delta:.4g})")


if __name__ == "__main__":
    main()

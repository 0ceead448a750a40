"""Temperature scaling of a run's class probabilities, fitted on its held-out fold (Guo et al., ICML 2017).

What lives here: the pure functions (`scale_probabilities`: p -> softmax(log p / T), which for a
softmax head is softmax(logits / T); `fit_temperature`: the T of least negative log-likelihood;
`cross_fitted_ece`: the ECE after scaling, each half of the cells scaled by the T fitted on the
other half, so the "after" number is not measured on the cells T was fitted on), and
`calibrate`, which reads the run's held-out predictions (`predictions.csv`), writes
`calibration.json` and a reliability diagram before and after. `herlev predict --calibrated`
applies the temperature. A temperature never changes the predicted class (it keeps the order of
the probabilities), only how confident they are, and so P(abnormal) and the screening call.

Works on probabilities, so every head that has them can be calibrated; `reg` has none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from herlev_fa.errors import HerlevError

CALIBRATION = "calibration.json"
T_RANGE = (0.05, 20.0)  # the temperatures searched
EPS = 1e-12  # probabilities are floored here before their log


def scale_probabilities(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Probabilities [N, K] -> softmax(log p / T) [N, K]; T > 1 softens them, T < 1 sharpens, T = 1 keeps them."""
    logp = np.log(np.clip(np.asarray(probs, np.float64), EPS, None)) / temperature  # [N, K]
    logp -= logp.max(axis=1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(axis=1, keepdims=True)


def nll(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean negative log-likelihood of the true classes [N] under probabilities [N, K]."""
    return float(-np.log(np.clip(np.asarray(probs)[np.arange(len(y)), y], EPS, None)).mean())


def fit_temperature(probs: np.ndarray, y: np.ndarray) -> float:
    """The temperature in `T_RANGE` that minimises the NLL of `scale_probabilities(probs, T)` on classes [N]."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y, np.int64)
    lo, hi = np.log(T_RANGE[0]), np.log(T_RANGE[1])
    best = minimize_scalar(lambda log_t: nll(scale_probabilities(probs, math.exp(log_t)), y), bounds=(lo, hi),
                           method="bounded", options={"xatol": 1e-4})
    return float(math.exp(best.x))


def cross_fitted_ece(probs: np.ndarray, y: np.ndarray, seed: int = 0) -> tuple[float, list[float]]:
    """ECE after temperature scaling, each of two random halves of the cells scaled by the T fitted on the other.

    Returns:
        The ECE of the pooled scaled probabilities, and the two temperatures.
    """
    from herlev_fa.metrics import expected_calibration_error

    y = np.asarray(y, np.int64)
    half = np.random.default_rng(seed).permutation(len(y)) < len(y) // 2  # [N] bool
    scaled = np.empty_like(np.asarray(probs, np.float64))
    temperatures = []
    for part in (half, ~half):
        t = fit_temperature(probs[~part], y[~part])
        scaled[part] = scale_probabilities(probs[part], t)
        temperatures.append(t)
    return expected_calibration_error(scaled, y), temperatures


@dataclass
class CalibrationResult:
    """What `calibrate` fitted and measured on the run's held-out fold."""

    temperature: float
    n: int
    ece_before: float
    ece_after: float  # cross-fitted (`cross_fitted_ece`)
    nll_before: float
    nll_after: float  # with `temperature`, on the cells it was fitted on (in-sample)
    files: list[Path]


def calibrate(run_dir: str | Path) -> CalibrationResult:
    """Fit a temperature on a fold run's held-out predictions; write `calibration.json` and
    `reliability_calibrated.png`.

    Raises:
        HerlevError: not a fold run, no held-out predictions, a head without probabilities, or too few cells.
    """
    import pandas as pd

    from herlev_fa.atomic import write_json
    from herlev_fa.figures import reliability_png
    from herlev_fa.metrics import decode, expected_calibration_error
    from herlev_fa.labels import Task
    from herlev_fa.model.heads import get_head
    from herlev_fa.runs import PREDICTIONS, RunRecord

    run_dir = Path(run_dir)
    record = RunRecord.read(run_dir)  # raises for a folder that is no run (an ensemble has no held-out fold)
    task, head = Task.from_json(record.task), get_head(record.head)
    path = run_dir / PREDICTIONS
    if not path.is_file():
        raise HerlevError(f"run '{run_dir}' has no {PREDICTIONS} (its held-out predictions); retrain it to calibrate")
    frame = pd.read_csv(path)
    out = frame[[c for c in frame.columns if c.startswith("out_")]].to_numpy(np.float32)  # [N, C]
    y = frame["y"].to_numpy(np.int64)  # [N]
    probs, _, _ = decode(out, head, task.severities)
    if probs is None:
        raise HerlevError(f"run '{run_dir}' has head '{head.name}', which gives no class probabilities to calibrate")
    if len(y) < 20:
        raise HerlevError(f"run '{run_dir}' holds out {len(y)} cells: "
                          "too few to fit and check a temperature (20 or more)")
    t = fit_temperature(probs, y)
    after, halves = cross_fitted_ece(probs, y)
    result = CalibrationResult(t, len(y), expected_calibration_error(probs, y), after, nll(probs, y),
                               nll(scale_probabilities(probs, t), y), [run_dir / CALIBRATION,
                                                                      run_dir / "reliability_calibrated.png"])
    write_json(result.files[0], {
        "temperature": t, "fitted_on": f"held-out fold {record.fold} ({len(y)} cells)", "n": len(y),
        "ece_before": result.ece_before, "ece_after": after,
        "ece_after_method": "cross-fitted: each half of the cells scaled by the temperature fitted on the other half",
        "half_temperatures": halves, "nll_before": result.nll_before, "nll_after": result.nll_after})
    reliability_png(scale_probabilities(probs, t), y, expected_calibration_error(scale_probabilities(probs, t), y),
                    result.files[1], title=f"{head.name}: after temperature scaling (T = {t:.2f}), n={len(y)}; "
                                           f"ECE {result.ece_before:.3f} before")
    return result


def run_temperature(run_dir: str | Path) -> float:
    """The temperature `calibrate` fitted for a run.

    Raises:
        HerlevError: the run has not been calibrated.
    """
    import json

    path = Path(run_dir) / CALIBRATION
    try:
        t = float(json.loads(path.read_text(encoding="utf-8"))["temperature"])
    except FileNotFoundError:
        raise HerlevError(f"run '{run_dir}' is not calibrated: run herlev calibrate {run_dir} first") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise HerlevError(f"'{path}' is damaged ({e!r}); run herlev calibrate {run_dir} again") from None
    if not (math.isfinite(t) and t > 0):
        raise HerlevError(f"'{path}' holds temperature {t}; run herlev calibrate {run_dir} again")
    return t

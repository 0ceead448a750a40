"""bench/constraint_sweep.py on tiny synthetic data: one table row per configuration, paired gains right."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from helpers import run_script

ROOT = Path(__file__).resolve().parents[1]


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


@pytest.fixture(scope="module")
def sweep(synth_data, tmp_path_factory) -> Path:
    """bench/constraint_sweep.py on the synthetic data: cls, reg, cls_reg at lambda 0.5 and 2, two folds."""
    out = tmp_path_factory.mktemp("bench") / "sweep"
    run_script(ROOT / "bench" / "constraint_sweep.py", "--data", synth_data, "--arch", "test_resnet", "--size", "32",
               "--epochs", "1", "--folds", "2", "--weights-lambda", "0.5,2", "--out", out, "--device", "cpu")
    return out


def test_constraint_sweep_table_matches_its_fold_runs(sweep):
    out = sweep
    lines = (out / "sweep.md").read_text().splitlines()
    assert "test_resnet, 32 px, 1 epochs" in lines[0] and "kept epoch: last" in lines[0]
    rows = {_cells(line)[0]: _cells(line) for line in lines if line.startswith("| ") and "configuration" not in line}
    assert list(rows) == ["cls", "reg", "cls_reg λ=0.5", "cls_reg λ=2"]

    def accuracy(folder: str, head: str) -> np.ndarray:
        return np.array([json.loads((out / folder / head / f"fold{k}" / "metrics.json").read_text())["accuracy"]
                         for k in (0, 1)])

    cls = accuracy("cls", "cls")
    assert rows["cls"][1] == f"{100 * cls.mean():.1f} ± {100 * cls.std():.1f}"
    assert rows["cls"][-1] == "+0.0 (0/2)"
    for label, folder in (("cls_reg λ=0.5", "cls_reg-0.5"), ("cls_reg λ=2", "cls_reg-2")):
        gain = accuracy(folder, "cls_reg") - cls
        assert rows[label][-1] == f"{100 * gain.mean():+.1f} ({int((gain > 0).sum())}/2)"
        config = json.loads((out / folder / "cls_reg" / "fold0" / "herlev.json").read_text())["config"]
        assert config["model"]["mse_weight"] == pytest.approx(float(label.split("=")[1]))
        assert config["keep"] == "last"


def test_big_mistakes_table_is_paired_over_the_same_cells(sweep):
    from herlev_fa.labels import get_task
    from herlev_fa.metrics import big_mistake_rate, decode
    from herlev_fa.model.heads import get_head

    run_script(ROOT / "bench" / "big_mistakes.py", "--sweep", sweep)
    lines = (sweep / "big_mistakes.md").read_text().splitlines()
    rows = {_cells(line)[0]: _cells(line) for line in lines if line.startswith("| ") and "configuration" not in line}
    assert list(rows) == ["cls", "reg", "cls_reg-0.5", "cls_reg-2"]
    sev = get_task("severity").severities

    def bad_cells(folder: str, head: str) -> list[np.ndarray]:  # per fold: is each held-out cell 2+ levels off
        masks = []
        for k in (0, 1):
            frame = pd.read_csv(sweep / folder / head / f"fold{k}" / "predictions.csv").sort_values("rel")
            out = np.array(frame[[c for c in frame.columns if c.startswith("out_")]], dtype=np.float32)
            _, _, pred = decode(out, get_head(head), sev)
            masks.append(np.abs(np.asarray(sev)[pred] - frame["y"].to_numpy()) >= 2)
            assert big_mistake_rate(frame["y"].to_numpy(), pred, sev) == pytest.approx(masks[-1].mean())
        return masks

    cls = bad_cells("cls", "cls")
    assert rows["cls"][1] == "2" and rows["cls"][4] == f"{sum(m.sum() for m in cls)}/168" and rows["cls"][-1] == "–"
    for folder, head in (("reg", "reg"), ("cls_reg-2", "cls_reg")):
        this = bad_cells(folder, head)
        assert rows[folder][3] == f"{100 * np.mean([m.mean() for m in this]):.1f}"
        only_this = sum(int((t & ~c).sum()) for t, c in zip(this, cls))
        only_cls = sum(int((c & ~t).sum()) for t, c in zip(this, cls))
        assert f"; {only_this} vs {only_cls}, p=" in rows[folder][-1]


def test_explain_study_pools_each_fold_on_its_own_held_out_cells(sweep, synth_data, tmp_path):
    """bench/explain_study.py: every held-out cell explained once per configuration, tables from those rows."""
    from herlev_fa.explanation.study import compare_runs, paired_comparison

    out = tmp_path / "explain"
    args = ["--sweep", sweep, "--out", out, "--configs", "cls,reg", "--baselines", "mean", "--steps", "8", "--device",
            "cpu"]
    run_script(ROOT / "bench" / "explain_study.py", *args)
    pooled = {}
    for config in ("cls", "reg"):
        tables = []
        for k in (0, 1):
            held_out = pd.read_csv(sweep / config / config / f"fold{k}" / "folds.csv").query(f"fold == {k}")
            table = pd.read_csv(out / config / "mean" / f"fold{k}" / "quantify.csv")
            rel = sorted(Path(p).relative_to(synth_data).as_posix() for p in table["path"])
            assert rel == sorted(held_out["rel"])  # the fold run's own held-out cells, each once
            tables.append(table)
        pooled[config] = pd.concat(tables, ignore_index=True)
        assert len(pooled[config]) == 168 and pooled[config]["path"].is_unique
    lines = (out / "study.md").read_text().splitlines()
    assert lines[0] == "# IG on the real cells: 8 steps, mean baselines" and "## Baseline mean" in lines
    assert sorted(p.name for p in out.glob("*.png")) == ["study_mean.png"]  # one Fig. 8 per baseline
    for config, table in pooled.items():
        row = next(_cells(line) for line in lines if line.startswith(f"| {config} | 168 |"))
        area = paired_comparison(table["nucleus_area_share"], table["nucleus_pos_share"])
        assert row[2:3] == [f"{area['b_greater']:.0%}"]
    versus = compare_runs(pooled, "cls", ["nucleus_enrichment"]).iloc[0]
    row = next(_cells(line) for line in lines if line.startswith("| reg | nucleus enrichment |"))
    assert row[2:5] == [str(int(versus["n"])), f"{versus['median_a']:.3f}", f"{versus['median_b']:.3f}"]
    rerun = run_script(ROOT / "bench" / "explain_study.py", *args)  # finished folds are reused, not redone
    assert "quantified" not in rerun and (out / "study.md").read_text() == "\n".join(lines) + "\n"


def test_compare_quantify_pools_cross_validated_runs_and_compares_them_on_the_same_cells(sweep, tmp_path):
    """`herlev compare-quantify` on two cross-validated runs: every held-out cell once per run,
    paired against the first."""
    from typer.testing import CliRunner

    import herlev_cli.explain  # noqa: F401  (registers the explanation commands)
    from herlev_cli.main import app
    from herlev_fa.explanation.study import compare_runs

    out = tmp_path / "fig8"
    runner = CliRunner()
    result = runner.invoke(app, ["compare-quantify", str(sweep / "cls" / "cls"), str(sweep / "reg" / "reg"),
                                 "--out", str(out), "--steps", "8", "--device", "cpu", "--quiet"])
    assert result.exit_code == 0, result.output
    tables = {}
    for label in ("cls", "reg"):  # default labels: the shortest distinct ends of the paths, also the folders
        folds = [pd.read_csv(out / label / f"fold{k}" / "quantify.csv") for k in (0, 1)]
        tables[label] = pd.concat(folds, ignore_index=True)
        assert len(tables[label]) == 168 and tables[label]["path"].is_unique  # each cell once, by its held-out fold
    versus = compare_runs(tables, "cls", ["nucleus_pos_share"]).iloc[0]
    report = (out / "study.md").read_text()
    assert "168 cells explained by every run" in report and "### Each run against cls" in report
    row = next(_cells(line) for line in report.splitlines()
               if line.startswith("| reg | nucleus share of + attribution |"))
    assert row[2:6] == ["168", f"{versus['median_a']:.3f}", f"{versus['median_b']:.3f}",
                        f"{versus['median_diff']:+.3f} [{versus['diff_q25']:+.3f}, {versus['diff_q75']:+.3f}]"]
    assert f"{versus['median_diff']:+.3f}" in result.output  # the printed table's paired column
    assert (out / "study.png").stat().st_size > 10_000
    bad = runner.invoke(app, ["compare-quantify", str(sweep), "--out", str(tmp_path / "x")])
    assert bad.exit_code != 0 and "no finished fold*/ run" in bad.output and "Traceback" not in bad.output
    assert not (tmp_path / "x").exists()  # refused before writing anything
    same = runner.invoke(app, ["compare-quantify", str(sweep / "cls" / "cls"), str(sweep / "reg" / "reg"), "--label",
                               "a/b", "--label", "a_b", "--out", str(tmp_path / "y")])
    assert same.exit_code != 0 and "name the same folder" in same.output and not (tmp_path / "y").exists()

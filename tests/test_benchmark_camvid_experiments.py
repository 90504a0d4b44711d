"""benchmarks/camvid_experiments.py: every run names a packaged config that loads with its
overrides, every table row names runs, and the table arithmetic (mean, spread over seeds)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from segblocks.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "camvid_experiments.py"


@pytest.fixture(scope="module")
def ce():
    spec = importlib.util.spec_from_file_location("camvid_experiments", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_runs_are_packaged_configs(ce):
    for run in ce.RUNS.values():
        cfg = load_config(f"camvid/{run.config}", list(run.overrides))
        assert cfg.dataset == "camvid" and cfg.init_from in (
            None,
            "checkpoints/camvid/static_full.pt",
            "checkpoints/camvid/long_static_full.pt",  # the long heuristic rows
        )
    assert {n for rows in ce.TABLES.values() for _, runs in rows for n in runs} <= set(ce.RUNS)


def test_row_stats_mean_and_spread(ce):
    def res(miou, hr=10.0):
        return {
            "miou": miou,
            "gmacs": 2.0,
            "hr_percent": 40.0,
            "thin_hr_percent": dict.fromkeys(ce.THIN, hr),
        }

    results = {"a": res(0.60), "b": res(0.58, 20.0)}
    latency = {"a": {"float32": 40.0, "bfloat16": 30.0}, "b": {"float32": 42.0}}
    s = ce.row_stats(["a", "b", "missing"], results, latency)
    assert s["seeds"] == 2 and s["miou"] == pytest.approx(59.0)
    assert s["miou_spread"] == pytest.approx(2.0) and s["thin_hr_percent"]["Pole"] == 15.0
    assert s["ms"] == {"float32": 41.0, "bfloat16": None}  # bf16 not measured for b
    assert ce.row_stats(["missing"], results, latency) is None
    text = ce.markdown({"controls": [("two seeds", s), ("absent", None)]}, 2.0)
    assert "59.0 (60.0, 58.0; spread 2.0)" in text and "not trained" in text


def test_all_tables_are_written_from_known_results(ce):
    """``--tables long`` evaluates only the long runs, yet every table is written from the
    results the JSON keeps (here: one old run and one new one)."""
    res = {
        "miou": 0.6,
        "gmacs": 2.0,
        "hr_percent": 40.0,
        "thin_hr_percent": dict.fromkeys(ce.THIN, 1.0),
    }
    tables = ce.all_tables({"static_06": res, "long_static_06": res}, {})
    assert list(tables) == list(ce.TABLES)
    rows = {label: s for key in ("main", "long") for label, s in tables[key]}
    assert rows["static 0.6x (30 + 6)"]["runs"] == ["static_06"]
    assert rows["static 0.6x (30 + 78)"]["runs"] == ["long_static_06"]
    assert rows["static 1.0x (30 + 78)"] is None


def test_training_curves_start_at_the_warm_start_only_for_its_model(ce, tmp_path, monkeypatch):
    """The static 1.0x curve starts at ``static_full`` (the same network, epoch 30); the 0.6x
    one at its own first validation, since ``static_full`` at 1.0x is not its model."""
    pytest.importorskip("matplotlib")
    head = "epoch,iter,loss,task_loss,policy_loss,hr_fraction,lr,val_miou\n"
    for name, miou in (("long_static_full", 0.62), ("long_static_06", 0.57)):
        run = tmp_path / "runs" / "camvid" / name
        run.mkdir(parents=True)
        (run / "log.csv").write_text(head + "6,270,0.9,0.9,0,1,1e-4,\n" + f"6,270,,,,,,{miou}\n")
    monkeypatch.setattr(ce, "ROOT", tmp_path)
    curves = ce.training_curves(tmp_path / "c.png", {}, {"miou": 0.61}, lambda msg: None)
    assert curves["long_static_full"] == [[30, 0.61], [36, 0.62]]
    assert curves["long_static_06"] == [[36, 0.57]]
    assert (tmp_path / "c.png").is_file()

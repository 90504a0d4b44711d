import pytest

from segblocks.cli import main
from segblocks.demo import run_demo, run_engine_demo

from .tiny import TINY

# the static run gets policy_kwargs={} from the demo (width is a policy-net option only)
DEMO_TINY = [o for o in TINY if not o.startswith("policy_kwargs.")]


def test_demo_writes_report(tmp_path):
    res = run_demo(tmp_path, epochs=1, val_images=2, val_size=(128, 256), overrides=DEMO_TINY)
    for f in ("report.md", "results.json", "fig7_miou_vs_gmacs.png", "fig8_hr_histogram.png"):
        assert (tmp_path / f).exists(), f
    assert (tmp_path / "fig9_decisions_0.png").exists()
    assert len(res["rows"]) == 3
    assert [r["budget"] for r in res["budget_sweep"]] == [0.2, 0.3, 0.4, 0.5, 0.6]
    gm = [r["gmacs"] for r in res["budget_sweep"]]
    assert gm == sorted(gm) and gm[0] < gm[-1]
    assert "budgets" in (tmp_path / "report.md").read_text()
    assert "thin_hr_rate" in res["thin_objects"]


def test_engine_demo_small(capsys):
    res = run_engine_demo((128, 256), 64, runs=1)
    assert res["worst_rel_err"] < 1e-4
    assert [r["n_hr"] for r in res["rows"]] == [2, 3, 5, 8]
    assert res["rows"][-1]["macs"] == res["dense_macs"]  # all HR: the dense network's MACs
    assert "exact to float32 rounding" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,msg",
    [(["--block-size", "96"], "multiple of 64"), (["--size", "100x256"], "not a multiple")],
)
def test_engine_demo_cli_errors(argv, msg, capsys):
    assert main(["demo", "--engine", "--threads", "1", *argv]) == 2
    assert msg in capsys.readouterr().err


def test_demo_replaces_its_own_training_runs(tmp_path):
    """Re-running the demo into the same report folder replaces its runs (overwrite=true)."""
    from segblocks.demo import CONFIG_NAME, _overrides
    from segblocks.training import load_config

    cfg = load_config(CONFIG_NAME, _overrides(tmp_path / "train_static", "all_hr", 1, 0))
    assert cfg.overwrite and not cfg.resume and cfg.policy == "all_hr"

"""benchmarks/camvid_latency.py: its pure helpers (no timing), and a one-frame smoke run when
the CamVid data and the committed checkpoints are present."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segblocks.models import create_model
from segblocks.models.segblocks_model import SegBlocksModel

from .torch_setup import seed_each_test  # noqa: F401  (one thread, autouse seed)

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "camvid_latency.py"
DATA = ROOT.parent / "shared" / "datasets" / "camvid"
CKPTS = ROOT / "checkpoints" / "camvid"


@pytest.fixture(scope="module")
def cl():
    spec = importlib.util.spec_from_file_location("camvid_latency", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


HEADLINE = [
    "camvid_latency_ratio_tau04_vs_static_full",
    "camvid_latency_ratio_tau04_vs_static08",
    "camvid_latency_ratio_tau02_vs_static06",
    "camvid_latency_ratio_tau04_vs_static_full_bf16",
    "camvid_latency_ratio_tau04_vs_static08_bf16",
    "camvid_latency_ratio_tau02_vs_static06_bf16",
    "camvid960_latency_ratio_tau04_vs_static08",
    "camvid_latency_ratio_tau04_exported_vs_eager",
    "camvid_latency_ratio_tau04_exported_vs_eager_bf16",
    "camvid_latency_ratio_tau04_aoti_vs_eager",
    "camvid_latency_ratio_tau04_aoti_vs_eager_bf16",
]


def test_headline_keys_and_ratios(cl):
    medians = {
        "static_full": {"float32": 60.0, "bfloat16": 40.0},
        "static_08": {"float32": 50.0},
        "static_06": {"float32": 30.0, "bfloat16": 20.0},
        "segblocks_tau04": {"float32": 45.0, "bfloat16": 30.0},
        "segblocks_tau02": {"float32": 33.0},
        "960/static_08": {"float32": 400.0},
        "960/segblocks_tau04": {"float32": 300.0, "bfloat16": 100.0},
        "compiled/static_full": {"float32": 50.0},
        "exported/segblocks_tau04": {"float32": 36.0},
        "aoti/segblocks_tau04": {"float32": 27.0, "bfloat16": 24.0},
    }
    h = cl.headline(medians)
    assert sorted(h) == sorted(HEADLINE)
    assert h["camvid_latency_ratio_tau04_vs_static_full"] == pytest.approx(0.75)
    assert h["camvid_latency_ratio_tau04_vs_static08"] == pytest.approx(0.9)
    assert h["camvid_latency_ratio_tau02_vs_static06"] == pytest.approx(1.1)
    assert h["camvid_latency_ratio_tau04_vs_static_full_bf16"] == pytest.approx(0.75)
    assert h["camvid_latency_ratio_tau04_vs_static08_bf16"] is None  # no bf16 static 0.8x
    assert h["camvid_latency_ratio_tau02_vs_static06_bf16"] is None  # no bf16 tau 0.2
    assert h["camvid960_latency_ratio_tau04_vs_static08"] == pytest.approx(0.75)
    assert h["camvid_latency_ratio_tau04_exported_vs_eager"] == pytest.approx(0.8)
    assert h["camvid_latency_ratio_tau04_exported_vs_eager_bf16"] is None
    assert h["camvid_latency_ratio_tau04_aoti_vs_eager"] == pytest.approx(0.6)
    assert h["camvid_latency_ratio_tau04_aoti_vs_eager_bf16"] == pytest.approx(0.8)
    assert all(v is None for v in cl.headline({}).values())
    ref = cl.reference_ratios(medians)
    assert ref["tau04_vs_static_full_compiled"] == pytest.approx(0.9)
    assert ref["tau04_vs_static08_compiled"] is None


def test_parse_dtypes_and_rotation(cl):
    assert cl.parse_dtypes("fp32,bf16") == ["float32", "bfloat16"]
    assert cl.parse_dtypes("bf16, fp32") == ["float32", "bfloat16"]
    assert cl.parse_dtypes("bfloat16") == ["bfloat16"]
    assert cl.parse_dtypes("both") == ["float32", "bfloat16"]
    with pytest.raises(ValueError, match="fp16"):
        cl.parse_dtypes("fp16")
    with pytest.raises(ValueError):
        cl.parse_dtypes(",")
    assert [cl.rotated([1, 2, 3], r) for r in range(4)] == [
        [1, 2, 3],
        [2, 3, 1],
        [3, 1, 2],
        [1, 2, 3],
    ]
    assert cl.rotated([], 3) == []


def test_block_size_variant_shares_the_network(cl):
    net = create_model("swiftnet_effl1", num_classes=3, decoder_width=16, output_stride=16)
    model = SegBlocksModel(net, "learned", 32, width=8).eval()
    m64 = cl.with_block_size(model, 64)
    assert m64.net is model.net and m64.block_size == 64
    assert m64.policy.block_size == 64 and model.policy.block_size == 32  # a copy
    assert m64.policy.net is model.policy.net
    # a 2x larger image at 2x the block: the same grid and the same policy input size
    assert m64.policy.input_size((2, 3)) == model.policy.input_size((2, 3))
    x = torch.randn(1, 3, 128, 192)
    with torch.inference_mode():
        out = m64(x)
        ref = model(torch.nn.functional.avg_pool2d(x, 2))
    assert out.grid.shape == ref.grid.shape == (1, 2, 3)
    assert out.logits.shape == (1, 3, 128, 192)
    static = SegBlocksModel(net, "dense", 32).eval()
    assert cl.with_block_size(static, 64) is static


def test_profile_rows_lists_the_named_rows_top_ops(cl):
    net = create_model("swiftnet_effl1", num_classes=3, decoder_width=16, output_stride=16)
    model = SegBlocksModel(net, "heuristic", 32, tau=0.5).eval()
    frames = [torch.randn(1, 3, 64, 96)]
    rows = [
        cl.Row(name, name, name, "float32", model, frames, (64, 96), 32)
        for name in ("segblocks", "other")
    ]
    prof = cl.profile_rows(rows, ["segblocks"], top=5)
    assert list(prof) == ["segblocks"] and list(prof["segblocks"]) == ["float32"]
    v = prof["segblocks"]["float32"]
    assert len(v["top_ops"]) == 5 and v["wall_ms_per_frame"] > 0
    ms = [op[1] for op in v["top_ops"]]
    assert ms == sorted(ms, reverse=True) and sum(ms) <= v["self_ms_per_frame"] + 1e-6
    assert not rows[0].times  # profiling is not timing
    lines = []
    cl.print_profile(lines.append, prof, 5)
    assert "profile of segblocks, fp32" in lines[0] and len(lines) == 6


def test_profile_names_must_be_rows(cl, capsys):
    with pytest.raises(SystemExit):
        cl.parse_args(["--models", "static_08", "--profile", "segblocks_tau04"])
    assert "--profile: ['segblocks_tau04'] are not rows of this run" in capsys.readouterr().err
    args = cl.parse_args(["--models", "static_08", "--profile", "static_08"])
    assert args.profile == ["static_08"]


@pytest.mark.skipif(
    not (DATA / "val").is_dir() or not list(CKPTS.glob("*.pt")),
    reason="needs ../shared/datasets/camvid and checkpoints/camvid",
)
def test_quick_run_writes_the_keys(tmp_path):
    out = tmp_path / "lat.json"
    cmd = [sys.executable, str(SCRIPT), "--quick", "--dtype", "fp32", "--no-compile"]
    cmd += ["--frames", "1", "--rounds", "1", "--threads", "1", "--json", str(out)]
    cmd += ["--models", "static_06", "segblocks_tau02", "--profile", "segblocks_tau02"]
    (tmp_path / "empty").mkdir()  # folders are searched in order
    cmd += ["--checkpoints", str(tmp_path / "empty"), str(CKPTS)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = json.loads(out.read_text())
    assert set(HEADLINE) <= set(res)
    assert res["camvid_latency_ratio_tau02_vs_static06"] > 0
    assert res["camvid_latency_ratio_tau04_vs_static_full"] is None
    assert res["camvid960_latency_ratio_tau04_vs_static08"] is None  # --quick: no 768x960
    assert set(res["medians_ms"]) == {"static_06", "segblocks_tau02"}
    assert 0 < res["rows"]["segblocks_tau02"]["hr_percent"] < 100
    assert res["machine"]["threads"] == 1 and res["argv"]
    assert res["config"]["checkpoints"]["static_06"] == str(CKPTS / "static_06.pt")
    assert list(res["profile"]) == ["segblocks_tau02"]
    assert res["profile"]["segblocks_tau02"]["float32"]["top_ops"]
    assert "profile of segblocks_tau02, fp32" in r.stdout


def test_missing_dataset_exits_cleanly(tmp_path):
    r = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--data-root", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert "CamVid not found" in r.stdout

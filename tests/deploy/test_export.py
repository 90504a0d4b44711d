"""Exported SegBlocks programs (segblocks.deploy): one program for every mask, equal to the
eager model, loadable in a fresh process; clear refusals for what cannot be exported."""

import json
import subprocess
import sys
import warnings
import zipfile

import pytest
import torch

from segblocks.blocks import kernels
from segblocks.deploy import ExportedSegBlocks, export_program, load_exported, save_exported
from segblocks.deploy.export import USE_MASK, USE_POLICY
from segblocks.errors import CheckpointError, ExportError
from segblocks.models.inference import optimize_for_inference
from segblocks.models.segblocks_model import create_segblocks

from ..tiny import heuristic_rn18

needs_cpp = pytest.mark.skipif(
    kernels.backend() != "cpp", reason="exporting block execution needs the compiled kernels"
)

SIZE = (64, 96)  # EffL1 at block 32: a 2 x 3 grid


def _rel(a, b) -> float:
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


@pytest.fixture(scope="module")
def effl1():
    """SwiftNet-EffL1 (the CamVid network: OS 16, block 32, depthwise convs) with a learned
    policy; random weights, BN statistics made non-trivial."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        m = create_segblocks(
            "swiftnet_effl1",
            "learned",
            32,
            num_classes=5,
            pretrained_backbone=False,
            output_stride=16,
            decoder_width=32,
            policy_kwargs={"width": 8},
        )
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.2, 0.2)
            mod.running_var.uniform_(0.5, 1.5)
    m.dataset, m.class_names = "procedural", [f"c{i}" for i in range(5)]
    m.palette = [(10 * i, 0, 255 - i) for i in range(5)]
    return m.eval()


@pytest.fixture(scope="module")
def effl1_pt2(effl1, tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "effl1.pt2"
    save_exported(effl1, path, SIZE)
    return path


def _masks(n_cells: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    yield torch.zeros(n_cells, dtype=torch.bool)  # all-LR
    yield torch.ones(n_cells, dtype=torch.bool)  # all-HR
    for _ in range(3):  # mixed
        yield torch.rand(n_cells, generator=g) < 0.5


@needs_cpp
def test_one_program_serves_every_mask_and_equals_eager(effl1, effl1_pt2):
    model = load_exported(effl1_pt2)
    assert isinstance(model, ExportedSegBlocks) and model.grid == (2, 3)
    fast = optimize_for_inference(effl1, example_size=SIZE)
    x = torch.randn(1, 3, *SIZE)
    with torch.no_grad():
        for mask in _masks(6):
            mask = mask.view(1, 2, 3)
            out = model(x, mask=mask)
            assert torch.equal(out.grid, mask)
            # the eager model as segblocks infer runs it, and as it was trained
            assert _rel(out.logits, fast(x, mask=mask).logits) < 1e-5
            assert _rel(out.logits, effl1(x, mask=mask).logits) < 1e-5
        # the policy's own decisions, and budgets that rank its blocks
        ref = fast(x)
        out = model(x)
        assert torch.equal(out.grid, ref.grid) and _rel(out.logits, ref.logits) < 1e-5
        for budget in (0.0, 0.5, 1.0, "4blocks", "40%"):
            ref, out = fast(x, budget=budget), model(x, budget=budget)
            assert torch.equal(out.grid, ref.grid), budget
            assert _rel(out.logits, ref.logits) < 1e-5
        gm = model.mac_cost(*model.padded_size)
        budget = f"{gm(3) + gm.per_block / 4:.9f}gmacs"  # room for 3 HR blocks, not 4
        ref = fast(x, budget=budget)
        assert int(ref.grid.sum()) == 3
        assert torch.equal(model(x, budget=budget).grid, ref.grid)


@needs_cpp
def test_block_ops_are_segblocks_operators_with_a_symbolic_count(effl1):
    ep = export_program(effl1, SIZE)
    targets = {str(n.target) for n in ep.graph.nodes if n.op == "call_function"}
    for op in ("sample_blocks", "conv_taps", "depthwise_conv_blocks", "combine_blocks"):
        assert f"segblocks.{op}.default" in targets, op
    # the HR count is one unbacked symbol, not a constant of the traced example
    assert any(str(s).startswith("u") for s in ep.range_constraints), ep.range_constraints
    prog = ep.module()
    x = torch.randn(1, 3, *SIZE)
    k = torch.full((1,), USE_MASK)
    with torch.no_grad():
        for n in range(7):  # every count from all-LR to all-HR
            mask = (torch.arange(6) < n).view(1, 2, 3)
            logits, grid = prog(x, k, mask)
            assert int(grid.sum()) == n and logits.shape == (1, 5, *SIZE)
        _, grid = prog(x, torch.full((1,), USE_POLICY), mask)
        assert grid.shape == (1, 2, 3)


@needs_cpp
def test_load_and_run_in_a_fresh_process(effl1_pt2, tmp_path):
    x = torch.randn(1, 3, *SIZE)
    mask = torch.tensor([[[True, False, True], [False, False, True]]])
    want = load_exported(effl1_pt2)(x, mask=mask).logits
    torch.save({"x": x, "mask": mask, "want": want}, tmp_path / "io.pt")
    code = (
        "import sys, torch, segblocks\n"
        "m = segblocks.load_exported(sys.argv[1])\n"
        "io = torch.load(sys.argv[2])\n"
        "got = m(io['x'], mask=io['mask']).logits\n"
        "assert m.class_names == [f'c{i}' for i in range(5)], m.class_names\n"
        "assert 'segblocks.training' not in sys.modules, 'loaded the training stack'\n"
        "print(float((got - io['want']).abs().max()))\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(effl1_pt2), str(tmp_path / "io.pt")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert float(r.stdout.strip().splitlines()[-1]) == 0.0


@needs_cpp
def test_metadata_and_bad_inputs(effl1_pt2, tmp_path):
    model = load_exported(effl1_pt2)
    assert model.size == SIZE and model.block_size == 32 and model.num_classes == 5
    assert model.dataset == "procedural" and model.metadata["ranks_blocks"]
    assert model.palette == [(10 * i, 0, 255 - i) for i in range(5)]  # what infer draws with
    with pytest.raises(ValueError, match=r"exported for images of shape \[1, 3, 64, 96\]"):
        model(torch.randn(1, 3, 64, 128))
    with pytest.raises(ValueError, match="mask must be a bool tensor of shape"):
        model(torch.randn(1, 3, *SIZE), mask=torch.ones(1, 3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match="latency calibration"):
        model(torch.randn(1, 3, *SIZE), budget="10ms")
    with pytest.raises(ValueError, match="inference"):
        model.train()
    with pytest.raises(FileNotFoundError):
        load_exported(tmp_path / "missing.pt2")
    (tmp_path / "text.pt2").write_text("not a program")
    with pytest.raises(CheckpointError, match="not an exported program"):
        load_exported(tmp_path / "text.pt2")
    with zipfile.ZipFile(tmp_path / "other.pt2", "w") as z:
        z.writestr("x/data.txt", "hello")
    with pytest.raises(CheckpointError, match="segblocks export"):
        load_exported(tmp_path / "other.pt2")
    with zipfile.ZipFile(effl1_pt2) as z:
        meta = json.loads(next(z.read(n) for n in z.namelist() if n.endswith("segblocks.json")))
    assert meta["format"] == "segblocks-exported" and meta["grid"] == [2, 3]


@needs_cpp
def test_torch_export_of_the_model_itself():
    """Non-strict torch.export of a SegBlocksModel works as it is (the output dataclass is a
    pytree node); RN18 covers max pooling's -inf border and plain (non-depthwise) convs."""
    m = heuristic_rn18(num_classes=3, decoder_width=16)
    x = torch.randn(1, 3, 128, 192)
    ep = torch.export.export(m, (x,))
    with torch.no_grad():
        out, ref = ep.module()(x), m(x)
    assert torch.equal(out.grid, ref.grid) and _rel(out.logits, ref.logits) < 1e-5


def test_refusals_name_segblocks_export():
    m = heuristic_rn18(num_classes=3, decoder_width=16)
    x = torch.randn(1, 3, 128, 192)
    with pytest.raises(ExportError, match="segblocks export .*--format pt2"):
        torch.jit.script(m)
    with pytest.raises(ExportError, match="segblocks export .*--format pt2"):
        torch.jit.trace(m, (x,))
    with pytest.raises(Exception, match="segblocks export .*--format pt2"):
        torch.export.export(m, (x,), strict=True)
    with kernels.use_backend("python"), pytest.raises(ExportError, match="compiled kernels"):
        export_program(m, (128, 192))
    with pytest.raises(ExportError, match="takes a SegBlocksModel"):
        export_program(m.net, (128, 192))

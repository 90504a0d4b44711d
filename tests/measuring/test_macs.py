"""Exact MAC accounting: dense hooks vs hand counts, block execution vs dense and BlockStats."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from segblocks.blocks import DenseFallback, block_sample
from segblocks.blocks.stats import BlockStats
from segblocks.cli import main
from segblocks.measuring.macs import MacReport, count_macs_blocks, count_macs_dense
from segblocks.policies import FixedMask, LearnedPolicy, RandomPolicy


def macs_cli(argv: list[str]) -> int:
    return main(["macs", *argv])


class SmallCNN(nn.Module):
    """Conv 3x3, strided conv, depthwise conv, 1x1 conv, global pool, linear."""

    def __init__(self, head=True):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)
        self.pw = nn.Conv2d(16, 4, 1)
        self.head = head
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        x = torch.relu(self.c1(x))
        x = torch.relu(self.bn(self.c2(x)))
        x = self.pw(torch.relu(self.dw(x)))
        if not self.head:
            return x
        return self.fc(x.mean((2, 3)))


def small_cnn_macs(H, W):
    """Per image, by hand: H_out * W_out * C_out * (C_in / groups) * kh * kw; linear in*out."""
    h2, w2 = H // 2, W // 2
    return [
        ("c1", H * W * 8 * 3 * 9),
        ("c2", h2 * w2 * 16 * 8 * 9),
        ("dw", h2 * w2 * 16 * 1 * 9),
        ("pw", h2 * w2 * 4 * 16 * 1),
        ("fc", 4 * 10),
    ]


# ------------------------------------------------------------------------- dense
def test_dense_small_cnn_by_hand():
    model = SmallCNN()
    rep = count_macs_dense(model, (2, 3, 32, 48))
    expect = small_cnn_macs(32, 48)
    assert [(r.name, r.macs) for r in rep.rows] == [(n, 2 * m) for n, m in expect]
    per = sum(m for _, m in expect)
    assert per == 32 * 48 * 216 + 16 * 24 * (1152 + 144 + 64) + 40
    assert rep.per_image == [per, per] and rep.total == 2 * per
    assert rep.num_images == 2 and rep.mode == "dense" and rep.policy == 0
    assert [r.type for r in rep.rows] == ["Conv2d"] * 4 + ["Linear"]
    assert rep.rows[0].output == "[2, 8, 32, 48]" and rep.rows[-1].output == "[2, 10]"


def test_dense_input_forms_and_restores_mode():
    model = SmallCNN().train()
    a = count_macs_dense(model, (3, 16, 16))
    b = count_macs_dense(model, torch.randn(1, 3, 16, 16))
    assert a.total == b.total == sum(m for _, m in small_cnn_macs(16, 16))
    assert model.training and model.bn.training
    assert model.bn.num_batches_tracked.item() == 0  # ran in eval mode


def test_repeated_module_gives_one_row_per_call():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    model = nn.Sequential(conv, nn.ReLU(), conv)
    rep = count_macs_dense(model, (1, 4, 8, 8))
    assert [r.name for r in rep.rows] == ["0", "0#2"]
    assert rep.total == 2 * 8 * 8 * 4 * 4 * 9


def test_resnet18_matches_fvcore_figure():
    """fvcore gives 1.819 GMACs for resnet18 @224 (NOTES). It counts conv + fc + batch norm
    (2 per element in eval) + adaptive avg pool (1 per input element); we count conv + linear."""
    timm = pytest.importorskip("timm")
    full = timm.create_model("resnet18", pretrained=False)
    rep = count_macs_dense(full, (1, 3, 224, 224))
    fc = [r for r in rep.rows if r.type == "Linear"]
    assert len(fc) == 1 and fc[0].macs == 512 * 1000
    assert rep.total == 1_814_073_344
    bn_elems = []
    hs = [
        m.register_forward_hook(lambda m, i, o: bn_elems.append(o.numel()))
        for m in full.modules()
        if isinstance(m, nn.BatchNorm2d)
    ]
    with torch.no_grad():
        full.eval()(torch.zeros(1, 3, 224, 224))
    for h in hs:
        h.remove()
    fvcore_like = rep.total + 2 * sum(bn_elems) + 512 * 7 * 7
    assert round(fvcore_like / 1e9, 3) == 1.819
    trunk = timm.create_model("resnet18", features_only=True, pretrained=False)
    t = count_macs_dense(trunk, (1, 3, 224, 224))
    assert t.total == rep.total - 512 * 1000 == 1_813_561_344
    assert abs(t.total / 1e9 - (1.819 - 0.000512)) < 0.006  # the rest is BN + pool


# ------------------------------------------------------------------------- blocks
def _mask(N, GH, GW, seed=0):
    g = torch.Generator().manual_seed(seed)
    m = torch.rand(N, GH, GW, generator=g) > 0.5
    m.view(N, -1)[:, 0] = True  # at least one HR and one LR block per image
    m.view(N, -1)[:, 1] = False
    return m


@pytest.mark.parametrize("kind", ["all_hr", "all_lr", "mixed"])
def test_blocks_vs_dense(kind):
    model = SmallCNN(head=False)
    N, bs, GH, GW = 2, 16, 2, 3
    x = torch.randn(N, 3, GH * bs, GW * bs)
    mask = {
        "all_hr": torch.ones(N, GH, GW, dtype=torch.bool),
        "all_lr": torch.zeros(N, GH, GW, dtype=torch.bool),
        "mixed": _mask(N, GH, GW),
    }[kind]
    dense = count_macs_dense(model, x)
    rep = count_macs_blocks(model, x, mask, block_size=bs)
    d = dense.per_image[0]
    B = GH * GW
    assert rep.mode == "blocks" and rep.num_images == N
    assert sum(rep.per_image) == rep.total == rep.hr + rep.lr
    assert [r.name for r in rep.rows] == ["c1", "c2", "dw", "pw"]
    assert all(r.kind == "block" for r in rep.rows)
    for n in range(N):
        h = int(mask[n].sum())
        # each HR block costs d / B, each LR block a quarter of that (exact integers)
        assert 4 * B * rep.per_image[n] == d * (4 * h + (B - h))
        assert rep.hr_fraction[n] == pytest.approx(h / B)
    if kind == "all_hr":
        assert rep.total == dense.total and rep.lr == 0
    if kind == "all_lr":
        assert 4 * rep.total == dense.total and rep.hr == 0
    for r, rd in zip(rep.rows, dense.rows, strict=True):  # per layer too
        h = int(mask.sum())
        assert 4 * B * N * r.macs == rd.macs * (4 * h + (N * B - h))


def test_blocks_agree_with_blockstats_and_blocktensor_input():
    model = SmallCNN(head=False)
    x = torch.randn(3, 3, 32, 64)
    mask = _mask(3, 2, 4, seed=1)
    with BlockStats() as st:
        rep = count_macs_blocks(model, x, mask, block_size=16)
    assert st.macs["hr"] == rep.hr > 0 and st.macs["lr"] == rep.lr > 0
    rep2 = count_macs_blocks(model, block_sample(x, mask, 16))
    assert rep2.per_image == rep.per_image and rep2.input_shape == (3, 3, 32, 64)


def test_blocks_mask_broadcast_and_shape_input():
    model = SmallCNN(head=False)
    m = torch.tensor([[True, False], [False, False]])
    rep = count_macs_blocks(model, (2, 3, 32, 32), m, block_size=16)
    assert rep.per_image[0] == rep.per_image[1]
    assert rep.hr_fraction == [0.25, 0.25]


class WithFallback(nn.Module):
    """Block conv, then a conv + global-context layer that needs the dense map."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.ctx = DenseFallback(nn.Sequential(nn.Conv2d(8, 8, 1), nn.Conv2d(8, 8, 3, padding=1)))
        self.c2 = nn.Conv2d(8, 4, 3, padding=1)

    def forward(self, x):
        return self.c2(self.ctx(self.c1(x)))


def test_dense_fallback_layers_count_at_dense_size():
    model = WithFallback()
    N, bs, GH, GW = 2, 8, 2, 2
    x = torch.randn(N, 3, GH * bs, GW * bs)
    mask = _mask(N, GH, GW, seed=2)
    rep = count_macs_blocks(model, x, mask, block_size=bs)
    kinds = {r.name: r.kind for r in rep.rows}
    assert kinds == {"c1": "block", "ctx.module.0": "dense", "ctx.module.1": "dense", "c2": "block"}
    H = W = 16
    dense_ctx = N * H * W * 8 * 8 * (1 + 9)
    assert rep.dense == dense_ctx
    for r in rep.rows:
        if r.kind == "dense":
            assert r.per_image == [r.dense // N] * N
    assert sum(rep.per_image) == rep.total == rep.hr + rep.lr + rep.dense
    with BlockStats() as st:
        count_macs_blocks(model, x, mask, block_size=bs)
    assert st.total_macs == rep.hr + rep.lr  # BlockStats sees block convs only


def test_policy_macs_added_per_image():
    model = SmallCNN(head=False)
    bs = 32
    x = torch.randn(2, 3, 64, 96)
    pol = LearnedPolicy(bs, width=8).eval()
    rep = count_macs_blocks(model, x, block_size=bs, policy=pol)  # the policy makes the mask
    pm = pol.macs((64, 96))
    assert pm > 0
    assert rep.policy_per_image == [pm, pm] and rep.policy == 2 * pm
    assert rep.rows[0].kind == "policy" and rep.rows[0].macs == 2 * pm
    assert rep.total == rep.network + rep.policy == rep.hr + rep.lr + 2 * pm
    base = count_macs_blocks(model, x, pol(x, (2, 3)).mask, block_size=bs)
    assert [a - b for a, b in zip(rep.per_image, base.per_image, strict=True)] == [pm, pm]
    # a given number of policy MACs per image
    rep_int = count_macs_blocks(model, x, pol(x, (2, 3)).mask, 32, policy=1000)
    assert rep_int.policy_per_image == [1000, 1000]
    # a mask-less call needs a policy
    with pytest.raises(ValueError, match="mask"):
        count_macs_blocks(model, x, block_size=bs)


class SegModel(nn.Module):
    """A model that holds its policy: the policy's convs are counted as ``policy`` rows."""

    def __init__(self, bs):
        super().__init__()
        self.bs = bs
        self.policy = LearnedPolicy(bs, width=8)
        self.trunk = SmallCNN(head=False)

    def forward(self, x):
        grid = (x.shape[2] // self.bs, x.shape[3] // self.bs)
        mask = self.policy(x, grid).mask
        return self.trunk(block_sample(x, mask, self.bs))


def test_policy_submodule_rows():
    model = SegModel(32)
    x = torch.randn(2, 3, 64, 64)
    rep = count_macs_dense(model, x)  # dense input; the model samples blocks itself
    pol_rows = [r for r in rep.rows if r.kind == "policy"]
    assert len(pol_rows) == 4 and all(r.name.startswith("policy.net.") for r in pol_rows)
    pm = model.policy.macs((64, 64))
    assert sum(r.macs for r in pol_rows) == 2 * pm and rep.policy_per_image == [pm, pm]
    assert {r.kind for r in rep.rows} == {"policy", "block"}
    # per-image attribution of the block rows uses each image's own mask
    with torch.no_grad():
        mask = model.policy.eval()(x, (2, 2)).mask
    direct = count_macs_blocks(model.trunk, x, mask, block_size=32)
    assert [a - pm for a in rep.per_image] == direct.per_image


# ------------------------------------------------------------------------- timm trunk
def test_resnet18_trunk_blocks():
    timm = pytest.importorskip("timm")
    trunk = timm.create_model("resnet18", features_only=True, pretrained=False)
    x = torch.randn(2, 3, 128, 192)  # block 64: grid 2x3, LR blocks reach 1 px at stride 32
    dense = count_macs_dense(trunk, x)
    ones = torch.ones(2, 2, 3, dtype=torch.bool)
    assert count_macs_blocks(trunk, x, ones, block_size=64).total == dense.total
    assert 4 * count_macs_blocks(trunk, x, ~ones, block_size=64).total == dense.total
    mask = _mask(2, 2, 3, seed=3)
    with BlockStats() as st:
        rep = count_macs_blocks(trunk, x, mask, block_size=64)
    assert (st.macs["hr"], st.macs["lr"]) == (rep.hr, rep.lr)
    d = dense.per_image[0]
    for n in range(2):
        h = int(mask[n].sum())
        assert 4 * 6 * rep.per_image[n] == d * (4 * h + 6 - h)


# ------------------------------------------------------------------------- report + CLI
def test_table_and_dict():
    model = SmallCNN(head=False)
    x = torch.randn(2, 3, 32, 32)
    rep = count_macs_blocks(model, x, block_size=16, policy=RandomPolicy(0.5, seed=0))
    assert isinstance(rep, MacReport)
    text = rep.table()
    for name in ("c1", "c2", "dw", "pw", "RandomPolicy", "per image", "HR block fraction"):
        assert name in text
    assert "HR [" in text and "LR [" in text
    d = rep.to_dict()
    assert d["total"] == rep.total and len(d["rows"]) == len(rep.rows)
    assert rep.table(max_rows=2).count("\n") < text.count("\n")
    fixed = count_macs_blocks(model, x, block_size=16, policy=FixedMask(torch.eye(2).bool()))
    assert fixed.hr_fraction == [0.5, 0.5] and fixed.policy == 0


def test_cli_smoke(capsys):
    pytest.importorskip("timm")
    rc = macs_cli(["--size", "128x128", "--block-size", "64", "--summary-only", "--seed", "1"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "ratio blocks/dense" in out and "== block execution ==" in out
    rc = macs_cli(["--size", "128x128", "--block-size", "64", "--policy", "learned"])
    out = capsys.readouterr().out
    assert rc == 0 and "LearnedPolicy" in out and "layer4.1.conv2" in out


@pytest.mark.parametrize(
    "argv,msg",
    [
        (["--size", "100x128", "--block-size", "64"], "multiple of --block-size"),
        (["--model", "no_such_model_xyz", "--size", "64x64", "--block-size", "64"], "model"),
    ],
)
def test_cli_errors(argv, msg, capsys):
    assert macs_cli(argv) == 2
    assert msg in capsys.readouterr().err


def test_cli_counts_registry_segmentation_model(capsys):
    """`segblocks macs --model swiftnet_rn18`: the SPP runs densely, all-HR equals dense."""
    args = ["--model", "swiftnet_rn18", "--size", "128x256", "--block-size", "64"]
    assert macs_cli(args + ["--policy", "all_hr", "--summary-only"]) == 0
    assert "ratio blocks/dense 1.0000" in capsys.readouterr().out
    assert macs_cli(args + ["--policy", "random", "--hr-fraction", "0.5", "--summary-only"]) == 0
    assert "ratio blocks/dense 1.0000" not in capsys.readouterr().out


def test_segblocks_model_counts_as_it_runs():
    """count_macs_segblocks: all-HR equals the dense SwiftNet; a mask's HR share lowers it."""
    from segblocks.measuring.macs import count_macs_segblocks
    from segblocks.models import create_model
    from segblocks.models.segblocks_model import SegBlocksModel

    net = create_model("swiftnet_rn18", num_classes=5, decoder_width=32)
    x = torch.zeros(1, 3, 128, 256)
    dense = count_macs_dense(net, x).total
    model = SegBlocksModel(net, "all_hr", block_size=64)
    assert count_macs_segblocks(model, x).total == dense
    half = torch.tensor([[[True, False, True, False], [False, True, False, True]]])
    rep = count_macs_segblocks(model, x, mask=half)
    assert rep.hr_fraction == [0.5] and rep.lr > 0 and rep.total < dense

"""End-to-end CLI: train -> eval -> infer on tiny procedural data."""

import numpy as np
from PIL import Image

from segblocks.cli import main

from .tiny import CONFIG, TINY


def test_train_eval_infer(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", CONFIG, *TINY, f"out_dir={out}"]) == 0
    ckpt = out / "last.pt"
    assert ckpt.exists()
    res = tmp_path / "eval.json"
    args = ["eval", "--checkpoint", str(ckpt), "--size", "128x256", "--max-images", "2"]
    assert main(args + ["--json", str(res), "--figures", str(tmp_path / "fig")]) == 0
    assert res.exists() and (tmp_path / "fig" / "hr_histogram.png").exists()
    assert "miou" in capsys.readouterr().out.lower()
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    Image.fromarray(np.zeros((100, 150, 3), np.uint8)).save(imgs / "a.png")
    assert main(["infer", str(imgs), str(tmp_path / "pred"), "--checkpoint", str(ckpt)]) == 0
    assert (tmp_path / "pred" / "a_seg.png").exists()
    assert (tmp_path / "pred" / "a_hr.png").exists()


def test_cli_errors(tmp_path, capsys):
    assert main(["train", "--config", CONFIG, "epoch=3"]) == 2
    assert "epoch" in capsys.readouterr().err
    assert main(["infer", str(tmp_path / "missing"), str(tmp_path / "o")]) == 2
    assert "missing" in capsys.readouterr().err
    assert main(["eval", "--dataset", "camvid"]) == 2
    assert "--data-root" in capsys.readouterr().err


def test_eval_bfloat16(capsys):
    args = ["eval", "--size", "128x256", "--max-images", "2", "--block-size", "64", "--no-fps"]
    assert main(args + ["--policy", "random", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "device cpu, bfloat16" in out and "mIoU" in out


def _n_bn(model) -> int:
    from torch import nn

    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_inference_commands_use_the_fast_form_unless_no_optimize():
    import torch

    from segblocks.cli import build_parser
    from segblocks.cli.common import model_from_args

    ap = build_parser()
    for cmd in ("eval", "infer", "calibrate", "bench"):
        extra = {"infer": ["in", "out"], "calibrate": ["--size", "128x128", "--out", "c.json"]}
        argv = [cmd, *extra.get(cmd, [])]
        assert ap.parse_args(argv).optimize is True
        assert ap.parse_args([*argv, "--no-optimize"]).optimize is False
    for policy in ("learned", "dense", "heuristic"):
        argv = ["eval", "--num-classes", "3", "--policy", policy, "--block-size", "64"]
        torch.manual_seed(0)
        slow = model_from_args(ap.parse_args([*argv, "--no-optimize"]))
        torch.manual_seed(0)
        fast = model_from_args(ap.parse_args(argv))
        assert _n_bn(fast) < _n_bn(slow) and not fast.training
        if policy == "learned":
            assert _n_bn(fast.policy) == 0 < _n_bn(slow.policy)
        w = next(p for p in fast.net.parameters() if p.dim() == 4 and p.shape[-1] > 1)
        assert w.is_contiguous(memory_format=torch.channels_last)
        # folding adds conv biases only: the same MACs, policy included
        assert fast.mac_cost(128, 192) == slow.mac_cost(128, 192)
        x = torch.randn(1, 3, 128, 192)
        mask = torch.ones(1, 2, 3, dtype=torch.bool)
        with torch.inference_mode():
            a, b = slow(x, mask=mask), fast(x, mask=mask)
        assert (a.logits - b.logits).abs().max() <= 1e-4 * a.logits.abs().max()


def test_eval_reports_the_same_macs_with_and_without_optimize(tmp_path):
    import json

    import torch

    res = {}
    for flag in ("", "--no-optimize"):
        out = tmp_path / f"eval{flag}.json"
        args = ["eval", "--size", "128x256", "--max-images", "2", "--block-size", "64"]
        args += ["--no-fps", "--policy", "heuristic", "--num-classes", "9", "--json", str(out)]
        torch.manual_seed(0)
        assert main(args + ([flag] if flag else [])) == 0
        res[flag] = json.loads(out.read_text())
    fast, slow = res[""], res["--no-optimize"]
    assert fast["gmacs_per_image"] == slow["gmacs_per_image"]
    assert fast["gmacs_policy"] == slow["gmacs_policy"]
    assert fast["hr_fractions"] == slow["hr_fractions"]
    assert abs(fast["pixel_accuracy"] - slow["pixel_accuracy"]) < 1e-3


def test_allocator_hint(tmp_path):
    """A CPU run under glibc malloc is told about tcmalloc; with tcmalloc mapped, on CUDA,
    without /proc or with no epochs to train nothing is said."""
    from segblocks.cli.train import allocator_hint

    glibc, tc = tmp_path / "glibc", tmp_path / "tc"
    glibc.write_text("7f00 r-xp /usr/lib/x86_64-linux-gnu/libc.so.6\n")
    tc.write_text("7f00 r-xp /usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4.5.9\n")
    assert "LD_PRELOAD=libtcmalloc_minimal.so.4" in allocator_hint("cpu", maps_file=str(glibc))
    assert allocator_hint("cpu", maps_file=str(tc)) is None
    assert allocator_hint("cuda", maps_file=str(glibc)) is None
    assert allocator_hint("cpu", maps_file=str(tmp_path / "absent")) is None
    assert allocator_hint("cpu", epochs=0, maps_file=str(glibc)) is None

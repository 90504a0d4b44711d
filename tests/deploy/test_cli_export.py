"""``segblocks export --format pt2 | aoti`` and ``segblocks infer --model PATH.pt2`` from a
trained checkpoint; the AOTInductor package loaded and run in a fresh process."""

import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from segblocks.blocks import kernels
from segblocks.cli import main
from segblocks.deploy import load_exported

from ..tiny import CONFIG, TINY

needs_cpp = pytest.mark.skipif(
    kernels.backend() != "cpp", reason="exporting block execution needs the compiled kernels"
)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--config", CONFIG, *TINY, f"out_dir={out}"]) == 0
    return out / "last.pt"


def _images(folder, n=2, h=100, w=120):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        a = rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        Image.fromarray(a).save(folder / f"im{i}.png")
    return folder


@needs_cpp
def test_export_then_infer_with_the_program(ckpt, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    assert main(["export", str(ckpt), str(out), "--size", "100x120"]) == 0
    assert "pt2, 1x3x100x120" in capsys.readouterr().out
    model = load_exported(out)
    assert model.size == (100, 120) and model.kind == "pt2"
    imgs = _images(tmp_path / "imgs")
    assert main(["infer", str(imgs), str(tmp_path / "pred"), "--model", str(out)]) == 0
    assert (tmp_path / "pred" / "im0_seg.png").is_file()
    assert (tmp_path / "pred" / "legend.csv").is_file()
    args = ["infer", str(imgs), str(tmp_path / "pred2"), "--model", str(out), "--budget", "0.5"]
    assert main(args) == 0
    # the eager model on the same image gives the same classes
    from segblocks.data.transforms import Normalize
    from segblocks.evaluation.infer import read_image
    from segblocks.models.inference import optimize_for_inference
    from segblocks.models.segblocks_model import SegBlocksModel

    eager = optimize_for_inference(SegBlocksModel.from_checkpoint(ckpt), example_size=(128, 128))
    x = read_image(imgs / "im0.png")
    x, _ = Normalize(model.input_mean, model.input_std)(x, torch.zeros(x.shape[-2:]).long())
    with torch.no_grad():
        a, b = model(x[None]), eager(x[None])
    assert torch.equal(a.grid, b.grid)
    assert float((a.logits - b.logits).abs().max() / b.logits.abs().max()) < 1e-5


@needs_cpp
def test_export_errors(ckpt, tmp_path, capsys):
    assert main(["export", str(ckpt), str(tmp_path / "m.pt2")]) == 2
    assert "--size" in capsys.readouterr().err
    assert main(["export", str(ckpt), str(tmp_path / "m.pt"), "--size", "64x64"]) == 2
    assert "--size applies to --format pt2" in capsys.readouterr().err
    out = tmp_path / "m.pt2"
    assert main(["export", str(ckpt), str(out), "--size", "64x64"]) == 0
    capsys.readouterr()
    imgs = _images(tmp_path / "imgs", n=1, h=64, w=64)
    args = ["infer", str(imgs), str(tmp_path / "p"), "--model", str(out)]
    assert main([*args, "--checkpoint", str(ckpt)]) == 2
    assert "not both" in capsys.readouterr().err
    # --block-size with a checkpoint is refused, not ignored (issue 18)
    eager = ["infer", str(imgs), str(tmp_path / "p0"), "--checkpoint", str(ckpt)]
    assert main([*eager, "--block-size", "32"]) == 2
    assert "the checkpoint's model runs in blocks of" in capsys.readouterr().err
    assert main([*args, "--policy", "all_hr"]) == 2
    assert "--policy cannot change an exported program" in capsys.readouterr().err
    # an unrelated existing file is not overwritten without --force; an earlier export is
    notes = tmp_path / "notes.txt"
    notes.write_text("keep me")
    assert main(["export", str(ckpt), str(notes)]) == 2
    assert "not a segblocks checkpoint or export" in capsys.readouterr().err
    assert notes.read_text() == "keep me"
    assert main(["export", str(ckpt), str(notes), "--force"]) == 0
    assert main(["export", str(ckpt), str(notes)]) == 0  # now a checkpoint: replaced
    assert main(["export", str(ckpt), str(out), "--size", "64x64"]) == 0  # an earlier .pt2
    capsys.readouterr()
    big = _images(tmp_path / "big", n=1, h=80, w=64)
    assert main(["infer", str(big), str(tmp_path / "p2"), "--model", str(out)]) == 2
    assert "exported for images of shape [1, 3, 64, 64]" in capsys.readouterr().err


@needs_cpp
@pytest.mark.skipif(shutil.which("g++") is None, reason="AOTInductor needs a C++ compiler")
def test_aoti_package_runs_in_a_fresh_process(ckpt, tmp_path, capsys):
    """The compiled package (a shared library of the whole program) gives the exported
    program's outputs in a process that only imports segblocks; ~40 s (compiling)."""
    pt2, aoti = tmp_path / "m.pt2", tmp_path / "m_aoti.pt2"
    assert main(["export", str(ckpt), str(pt2), "--size", "128x128"]) == 0
    assert main(["export", str(ckpt), str(aoti), "--size", "128x128", "--format", "aoti"]) == 0
    assert "aoti, 1x3x128x128" in capsys.readouterr().out
    prog = load_exported(pt2)
    x = torch.randn(1, 3, 128, 128)
    # a channels-last image (a decoded video frame is one) gives the same result
    x_cl = x.contiguous(memory_format=torch.channels_last)
    torch.save({"x": x, "x_cl": x_cl}, tmp_path / "x.pt")
    want = {}
    for name, kw in (("policy", {}), ("all_lr", {"budget": 0.0}), ("all_hr", {"budget": 1.0})):
        with torch.no_grad():
            out = prog(x, **kw)
        want[name] = (out.logits, out.grid)
    mixed = torch.tensor([[[True, False], [False, True]]])
    want["mixed"] = (prog(x, mask=mixed).logits, mixed)
    torch.save(want, tmp_path / "want.pt")
    code = (
        "import sys, torch, segblocks\n"
        "m = segblocks.load_exported(sys.argv[1])\n"
        "assert m.kind == 'aoti', m.kind\n"
        "x = torch.load(sys.argv[2])['x']\n"
        "want = torch.load(sys.argv[3])\n"
        "kws = {'policy': {}, 'all_lr': {'budget': 0.0}, 'all_hr': {'budget': 1.0},\n"
        "       'mixed': {'mask': want['mixed'][1]}}\n"
        "assert torch.equal(m(torch.load(sys.argv[2])['x_cl']).logits, m(x).logits)\n"
        "for name, kw in kws.items():\n"
        "    out = m(x, **kw)\n"
        "    logits, grid = want[name]\n"
        "    assert torch.equal(out.grid, grid), name\n"
        "    err = float((out.logits - logits).abs().max() / logits.abs().max())\n"
        "    assert err < 1e-5, (name, err)\n"
        "print('ok')\n"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(aoti), str(tmp_path / "x.pt"), str(tmp_path / "want.pt")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-3000:]


@needs_cpp
@pytest.mark.skipif(shutil.which("g++") is None, reason="AOTInductor needs a C++ compiler")
def test_video_runs_the_compiled_package_by_default(ckpt, tmp_path, monkeypatch, capsys):
    """A stream with --checkpoint runs the AOTInductor package (compiled once, then cached);
    same decisions as --engine eager; calibrate times the same package."""
    av = pytest.importorskip("av")
    import csv

    monkeypatch.setenv("SEGBLOCKS_CACHE_DIR", str(tmp_path / "cache"))
    video = tmp_path / "clip.mp4"
    c = av.open(str(video), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = 128, 128, "yuv420p"
    rng = np.random.default_rng(0)
    for _ in range(4):
        a = rng.integers(0, 255, (128, 128, 3), dtype=np.uint8)
        for p in s.encode(av.VideoFrame.from_ndarray(a, format="rgb24")):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()

    def run(out, *extra):
        argv = ["infer", str(video), str(tmp_path / out), "--checkpoint", str(ckpt)]
        assert main([*argv, "--no-progress", *extra]) == 0
        with open(tmp_path / out / "frames.csv") as f:
            rows = list(csv.DictReader(f))
        return rows, capsys.readouterr().err

    compiled, err = run("a")
    assert "compiling the model for 128x128" in err
    assert len(list((tmp_path / "cache").glob("*.pt2"))) == 1
    again, err = run("b")
    assert "compiling" not in err  # from the cache
    eager, _ = run("c", "--engine", "eager")
    assert [r["hr_percent"] for r in compiled] == [r["hr_percent"] for r in eager]
    assert [r["hr_percent"] for r in again] == [r["hr_percent"] for r in eager]
    cal = tmp_path / "cal.json"
    argv = ["calibrate", "--checkpoint", str(ckpt), "--size", "128x128", "--counts", "2"]
    # all-LR vs all-HR of a 2x2 grid differ by a few ms: on a loaded machine the measured
    # slope can come out <= 0, which calibrate rightly refuses; what is tested here is which
    # model it times, so a refusal for noise is measured again (at most twice more)
    for _ in range(3):
        rc = main([*argv, "--runs", "3", "--warmup", "1", "--out", str(cal)])
        err = capsys.readouterr().err
        if rc == 0 or "too noisy" not in err:
            break
    assert rc == 0, err
    assert '"engine": "aoti"' in cal.read_text()
    assert "compiling" not in err  # the package infer compiled
    # an eager calibration does not pass for the compiled run, with a message saying so (the
    # same figures marked eager: a second timing would only add noise to the test)
    args = ["infer", str(video), str(tmp_path / "d"), "--checkpoint", str(ckpt)]
    eager_cal = tmp_path / "eager.json"
    eager_cal.write_text(cal.read_text().replace('"engine": "aoti"', '"engine": "eager"'))
    assert main([*args, "--budget", "30ms", "--calibration", str(eager_cal)]) == 2
    assert "engine 'eager'" in capsys.readouterr().err
    assert main([*args, "--budget", "30ms", "--calibration", str(cal), "--no-progress"]) == 0

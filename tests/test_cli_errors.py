"""Issue 9 probes through the CLI: each gives the right result or a one-line error naming the
file / key / value and the fix, with no traceback (``--debug`` shows it)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segblocks.cli import main
from segblocks.data.palettes import CITYSCAPES_PALETTE, generic_palette
from segblocks.models import create_model, save_checkpoint
from segblocks.training import load_config, train

from .tiny import CONFIG, TINY
from .torch_setup import seed_each_test  # noqa: F401  (one thread, seeded)

EVAL = ["--size", "128x256", "--max-images", "1", "--no-fps"]


def one_line_error(capsys, *needles: str) -> str:
    """The single ``segblocks CMD: ...`` line on stderr (no traceback), containing needles."""
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("segblocks ")]
    assert len(lines) == 1, err
    for n in needles:
        assert n in lines[0], (n, lines[0])
    return lines[0]


def link_run(src: Path, dst: Path) -> Path:
    """A copy of a finished run folder made of hard links (the checkpoint is 135 MB)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "train.lock":
            os.link(f, dst / f.name)
    return dst


def train_args(out_dir, *extra) -> list[str]:
    return ["train", "--config", CONFIG, *TINY, f"out_dir={out_dir}", "eval_at_end=false", *extra]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A finished tiny run (1 epoch): last.pt, log.csv, config.yaml, metrics.json."""
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("finished") / "run"
    train(load_config(CONFIG, [*TINY, f"out_dir={out}", "eval_at_end=false"]))
    return out


@pytest.fixture
def images(tmp_path) -> Path:
    d = tmp_path / "imgs"
    d.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(d / "a.png")
    return d


# ------------------------------------------------------------------ unreadable checkpoints
def _bad_checkpoint(kind: str, good: Path, path: Path) -> Path:
    if kind == "truncated":
        with open(good, "rb") as f:
            path.write_bytes(f.read(1_000_000))
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(np.random.default_rng(0).bytes(5000))
    return path


@pytest.mark.parametrize("kind", ["truncated", "empty", "random"])
@pytest.mark.parametrize("command", ["eval", "infer", "resume"])
def test_bad_checkpoint(kind, command, run_dir, images, tmp_path, capsys):
    if command == "resume":
        run = link_run(run_dir, tmp_path / "run")
        (run / "last.pt").unlink()
        ckpt = _bad_checkpoint(kind, run_dir / "last.pt", run / "last.pt")
        argv = train_args(run, "resume=true")
        hint = "resume=false overwrite=true"
    else:
        ckpt = _bad_checkpoint(kind, run_dir / "last.pt", tmp_path / "model.pt")
        argv = (
            ["eval", "--checkpoint", str(ckpt), *EVAL]
            if command == "eval"
            else ["infer", str(images), str(tmp_path / "out"), "--checkpoint", str(ckpt)]
        )
        hint = "delete it"
    assert main(argv) == 2
    line = one_line_error(capsys, str(ckpt), hint)
    assert "weights_only=False" not in line  # wrong advice for a corrupt file
    assert ("empty" if kind == "empty" else "truncated") in line


def test_debug_shows_the_traceback(run_dir, tmp_path, capsys):
    bad = _bad_checkpoint("random", run_dir / "last.pt", tmp_path / "x.pt")
    from segblocks.errors import CheckpointError

    with pytest.raises(CheckpointError, match="x.pt"):
        main(["--debug", "eval", "--checkpoint", str(bad), *EVAL])
    with pytest.raises(CheckpointError):
        main(["eval", "--checkpoint", str(bad), *EVAL, "--debug"])
    with pytest.raises(ValueError, match="'lr'"):
        main(["train", "--config", CONFIG, "lr=-1", "--debug"])


# ------------------------------------------------------------ another model or class count
def test_resume_with_another_model_or_class_count(run_dir, tmp_path, capsys):
    run = link_run(run_dir, tmp_path / "run")
    assert main(train_args(run, "resume=true", "num_classes=5")) == 2
    one_line_error(capsys, "num_classes None -> 5", "cannot change on resume", "new out_dir")
    assert main(train_args(run, "resume=true", "model=swiftnet_effl1")) == 2
    one_line_error(capsys, "model 'swiftnet_rn18' -> 'swiftnet_effl1'")
    # a model-only checkpoint has no training state to resume
    only = tmp_path / "only"
    only.mkdir()
    save_checkpoint(
        create_model("swiftnet_rn18", num_classes=9, decoder_width=32), only / "last.pt"
    )
    assert main(train_args(only, "resume=true")) == 2
    one_line_error(capsys, "no training state", "resume=false overwrite=true")


def test_checkpoint_weights_of_another_shape(images, tmp_path, capsys):
    """A checkpoint whose weights do not fit its recorded config (e.g. edited)."""
    path = save_checkpoint(
        create_model("swiftnet_rn18", num_classes=3, decoder_width=16), tmp_path / "m.pt"
    )
    ckpt = torch.load(path, weights_only=True)
    ckpt["model_config"]["num_classes"] = 19
    torch.save(ckpt, path)
    assert main(["eval", "--checkpoint", str(path), *EVAL]) == 2
    one_line_error(capsys, str(path), "do not fit", "head.conv.weight")
    assert main(["infer", str(images), str(tmp_path / "o"), "--checkpoint", str(path)]) == 2
    one_line_error(capsys, str(path), "do not fit")


def test_eval_on_a_dataset_with_another_class_count(run_dir, tmp_path, capsys):
    root = tmp_path / "camvid"
    for sub in ("val", "valannot"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(root / "val" / "a.png")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(root / "valannot" / "a.png")
    argv = ["eval", "--checkpoint", str(run_dir / "last.pt"), "--dataset", "camvid"]
    assert main([*argv, "--data-root", str(root), "--no-fps"]) == 2
    one_line_error(capsys, "predicts 9 classes", "camvid has 11", "--dataset procedural")


# ------------------------------------------------------------------ resume with other config
@pytest.mark.parametrize(
    "change,shown",
    [
        ("tau=0.3", "tau 0.4 -> 0.3"),
        ("block_size=128", "block_size 64 -> 128"),
        ("epochs=2", "epochs 1 -> 2"),
    ],
)
def test_resume_refuses_config_changes(change, shown, run_dir, tmp_path, capsys):
    run = link_run(run_dir, tmp_path / "run")
    before = (run / "last.pt").stat().st_mtime_ns
    assert main(train_args(run, "resume=true", change)) == 2
    key = change.split("=")[0]
    one_line_error(capsys, shown, f"allow_config_change=[{key}]")
    assert (run / "last.pt").stat().st_mtime_ns == before


def test_resume_decoder_width_is_never_allowed(run_dir, tmp_path, capsys):
    run = link_run(run_dir, tmp_path / "run")
    argv = train_args(run, "resume=true", "model_kwargs.decoder_width=64")
    assert main([*argv, "allow_config_change=[model_kwargs]"]) == 2
    one_line_error(capsys, "model_kwargs.decoder_width 32 -> 64", "cannot change on resume")


def test_resume_extends_epochs_when_allowed(run_dir, tmp_path, capsys):
    from segblocks.models import load_checkpoint

    run = link_run(run_dir, tmp_path / "run")
    assert main(train_args(run, "resume=true", "epochs=2", "allow_config_change=[epochs]")) == 0
    ckpt = load_checkpoint(run / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["epochs"] == 2
    with open(run / "log.csv", newline="") as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 1, 2, 2]


# --------------------------------------------------------------------------- output folders
def test_rerun_into_a_finished_out_dir(run_dir, tmp_path, capsys):
    run = link_run(run_dir, tmp_path / "run")
    log = (run / "log.csv").read_bytes()
    before = (run / "last.pt").stat().st_mtime_ns
    assert main(train_args(run)) == 2
    one_line_error(capsys, str(run), "not empty", "resume=true", "overwrite=true")
    assert (run / "log.csv").read_bytes() == log and (run / "last.pt").stat().st_mtime_ns == before
    (run / f".last.pt.{os.getpid()}.tmp").write_bytes(b"left by a killed write")
    assert main(train_args(run, "overwrite=true", "seed=1")) == 0
    assert not list(run.glob(".last.pt.*.tmp"))  # stale temporary files removed
    assert (run / "last.pt").stat().st_mtime_ns != before
    mode = (run / "last.pt").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask  # not mkstemp's 0600


def test_out_dir_is_a_file(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main(train_args(f)) == 2
    one_line_error(capsys, str(f), "is a file")


def _wait_for(cond, timeout: float, proc) -> None:
    t0 = time.time()
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"trainer exited early: {proc.communicate()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError("trainer did not get going in time")
        time.sleep(0.2)


def test_second_trainer_and_ctrl_c(tmp_path, capsys):
    """A running trainer holds out_dir: a second one is refused naming its PID; Ctrl-C then
    stops the first with a one-line message telling how to resume."""
    out = tmp_path / "run"
    overrides = [*TINY, "epochs=500", "eval_at_end=false"]
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from segblocks.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    cmd = [sys.executable, "-c", code, "train", "--config", CONFIG, *overrides, f"out_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        _wait_for(lambda: (out / "last.pt").exists(), 120, proc)
        assert f"pid {proc.pid}" in (out / "train.lock").read_text()
        assert main(train_args(out)) == 2
        one_line_error(capsys, "in use by another segblocks train", f"pid {proc.pid}")
        assert main(train_args(out, "resume=true")) == 2  # also while resuming
        one_line_error(capsys, f"pid {proc.pid}")
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    lines = [ln for ln in err.splitlines() if ln.startswith("segblocks ")]
    assert len(lines) == 1, err
    assert "segblocks train: interrupted in epoch" in lines[0]
    assert "Resume with: segblocks train --config" in lines[0] and lines[0].endswith("resume=true")
    assert (out / "train.lock").read_text() == ""  # released


# --------------------------------------------------------------------------------- infer
def _png16(path: Path, arr: np.ndarray) -> None:
    """Write a 16-bit PNG (grayscale [H, W] or RGB [H, W, 3] uint16)."""
    import struct

    h, w = arr.shape[:2]
    color = 0 if arr.ndim == 2 else 2
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, data):
        crc = zlib.crc32(tag + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)
    body = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)


@pytest.mark.parametrize("channels", [1, 3])
def test_infer_16_bit_png(channels, tmp_path, capsys):
    rng = np.random.default_rng(0)
    shape = (64, 96) if channels == 1 else (64, 96, 3)
    img8 = rng.integers(0, 256, shape, dtype=np.uint8)
    (tmp_path / "in16").mkdir()
    (tmp_path / "in8").mkdir()
    _png16(tmp_path / "in16" / "x.png", img8.astype(np.uint16) * 257)  # same picture, 16 bits
    Image.fromarray(img8).save(tmp_path / "in8" / "x.png")
    args = ["--block-size", "64", "--policy", "all_hr"]
    torch.manual_seed(0)  # the same random model for both runs
    assert main(["infer", str(tmp_path / "in16"), str(tmp_path / "o16"), *args]) == 0
    err = capsys.readouterr().err
    assert "x.png: 16-bit image" in err and "scaled to 8 bits" in err
    torch.manual_seed(0)
    assert main(["infer", str(tmp_path / "in8"), str(tmp_path / "o8"), *args]) == 0
    for kind in ("seg", "hr"):
        a = np.asarray(Image.open(tmp_path / "o16" / f"x_{kind}.png"))
        b = np.asarray(Image.open(tmp_path / "o8" / f"x_{kind}.png"))
        assert np.array_equal(a, b), kind  # not garbled: identical to the 8-bit picture


def test_infer_refuses_name_collisions(images, tmp_path, capsys):
    Image.open(images / "a.png").convert("RGB").save(images / "a.jpg")
    assert main(["infer", str(images), str(tmp_path / "out"), "--block-size", "64"]) == 2
    one_line_error(capsys, "a.jpg and a.png would both write a_seg.png", "rename")
    assert not (tmp_path / "out").exists()


def _class_checkpoint(path: Path, num_classes: int, dataset: str | None) -> Path:
    net = create_model("swiftnet_rn18", num_classes=num_classes, decoder_width=16)
    with torch.no_grad():  # every class wins somewhere: a bias ramp over a random image
        net.head.conv.bias.copy_(torch.linspace(0, 1, num_classes))
    sb = {"policy": "all_hr", "policy_kwargs": {}, "block_size": 64}
    if dataset:
        sb["dataset"] = dataset
    return save_checkpoint(net, path, segblocks=sb)


@pytest.mark.parametrize("dataset", ["cityscapes", None])
def test_infer_palette_of_the_checkpoint_dataset(dataset, images, tmp_path, capsys):
    ckpt = _class_checkpoint(tmp_path / "m.pt", 19, dataset)
    out = tmp_path / "out"
    assert main(["infer", str(images), str(out), "--checkpoint", str(ckpt)]) == 0
    stdout = capsys.readouterr().out
    palette = CITYSCAPES_PALETTE if dataset else generic_palette(19)
    assert ("cityscapes palette" if dataset else "generic palette") in stdout
    seg = np.asarray(Image.open(out / "a_seg.png")).reshape(-1, 3)
    colours = {tuple(int(v) for v in c) for c in np.unique(seg, axis=0)}
    assert colours <= set(palette) and (0, 0, 0) not in colours
    with open(out / "legend.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 19 and len({(r["r"], r["g"], r["b"]) for r in rows}) == 19
    assert rows[18]["name"] == ("bicycle" if dataset else "class_18")


def test_infer_output_path_is_a_file(images, tmp_path, capsys):
    f = tmp_path / "taken"
    f.write_text("x")
    assert main(["infer", str(images), str(f), "--block-size", "64"]) == 2
    one_line_error(capsys, str(f), "is a file")


def test_infer_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["infer", str(tmp_path / "empty"), str(tmp_path / "o")]) == 2
    one_line_error(capsys, "no images in", "empty")


def test_infer_webp_and_skipped_files(images, tmp_path, capsys):
    Image.open(images / "a.png").save(images / "b.webp")
    (images / "notes.xyz").write_text("not an image")
    out = tmp_path / "out"
    assert main(["infer", str(images), str(out), "--block-size", "64"]) == 0
    captured = capsys.readouterr()
    assert "skipped 1 file(s)" in captured.err and "notes.xyz" in captured.err
    assert "wrote 2" in captured.out
    assert (out / "b_seg.png").exists() and (out / "b_hr.png").exists()


# ------------------------------------------------------------------------ config values
BAD_CONFIGS = [
    ("lr=-1", "'lr': -1 must be > 0"),
    ("lr=0", "'lr': 0 must be > 0"),
    ("resume=maybe", "'resume': 'maybe' must be true or false"),
    ("crop_size=[100,100]", "use crop_size=[128, 128]"),
    ("epochs=1.7", "'epochs': 1.7 must be an integer"),
    ("lr=abc", "'lr': 'abc' is not a number"),
    ("gamma=high", "'gamma': 'high' is not a number"),
    ("crop_size=[-5,128]", "'crop_size': -5 must be >= 1"),
    ("device=cdua", "did you mean 'cuda'"),
    ("jitter=-1", "'jitter': -1 must be >= 0"),
    ("num_workers=-1", "'num_workers': -1 must be >= 0"),
    ("block_size=30", "'block_size': 30 must be a multiple of 64"),
    ("dataset=camvid", "dataset camvid needs data_root"),
    ("model_kwargs.decodr_width=64", "did you mean 'decoder_width'"),
    ("policy_kwargs.widht=8", "did you mean 'width'"),
    ("crop_size=[128,128", "invalid YAML"),
    ("allow_config_change=[epoch]", "did you mean 'epochs'"),
]


@pytest.mark.parametrize("override,message", BAD_CONFIGS)
def test_bad_config_values(override, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", CONFIG, *TINY, f"out_dir={out}", override]) == 2
    one_line_error(capsys, "segblocks train: error: ", message)
    assert not out.exists()  # refused before anything was written


def test_yaml_syntax_error_names_the_file(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: swiftnet_rn18\ncrop_size: [256, 256\nepochs: 2\n")
    assert main(["train", "--config", str(bad)]) == 2
    one_line_error(capsys, f"config file {bad}: invalid YAML at line", "fix the YAML syntax")
    assert main(["train", "--config", str(tmp_path / "missing.yaml")]) == 2
    one_line_error(capsys, "missing.yaml not found", "procedural_tiny")


def test_eval_fresh_model_takes_the_datasets_classes(tmp_path, capsys):
    root = tmp_path / "camvid"
    for sub in ("val", "valannot"):
        (root / sub).mkdir(parents=True)
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(root / "val" / "a.png")
    Image.fromarray(np.full((64, 64), 10, np.uint8)).save(root / "valannot" / "a.png")
    js = tmp_path / "r.json"
    argv = ["eval", "--dataset", "camvid", "--data-root", str(root), "--no-fps"]
    assert main([*argv, "--block-size", "64", "--json", str(js)]) == 0
    res = json.loads(js.read_text())
    assert len(res["iou"]) == 11 and res["class_names"][10] == "Bicyclist"
    assert main([*argv, "--num-classes", "9"]) == 2
    one_line_error(capsys, "predicts 9 classes", "camvid has 11")


def test_export_half_precision_rebuilds_the_model(run_dir, tmp_path, images, capsys):
    from segblocks.models.segblocks_model import SegBlocksModel

    out = tmp_path / "exp" / "model.pt"
    assert main(["export", str(run_dir / "last.pt"), str(out)]) == 0
    assert "MiB" in capsys.readouterr().out
    ck = torch.load(out, weights_only=True)
    assert "optimizer" not in ck and "rng_states" not in ck
    floats = [v for v in ck["state_dict"].values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    full, half = (
        SegBlocksModel.from_checkpoint(run_dir / "last.pt"),
        SegBlocksModel.from_checkpoint(out),
    )
    assert half.policy.name == full.policy.name and half.block_size == full.block_size
    assert next(half.net.parameters()).dtype == torch.float32
    x = torch.randn(1, 3, 128, 128)
    with torch.no_grad():
        a, b = full(x).logits, half(x).logits
    assert ((a - b).norm() / a.norm()).item() < 1e-2
    argv = ["eval", "--checkpoint", str(out), *EVAL]
    assert main(argv) == 0
    assert main(["infer", str(images), str(tmp_path / "o"), "--checkpoint", str(out)]) == 0
    assert main(["export", str(run_dir / "missing.pt"), str(out)]) == 2


def test_eval_budget_and_budget_sweep(tmp_path, capsys):
    base = ["eval", "--policy", "heuristic", "--block-size", "64", *EVAL]
    js = tmp_path / "s.json"
    argv = [*base, "--budget-sweep", "0.25,1.0", "--json", str(js), "--figures", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads(js.read_text())["budget_sweep"]
    assert [r["hr_percent"] for r in rows] == [25.0, 100.0]
    assert rows[0]["gmacs"] < rows[1]["gmacs"]
    assert (tmp_path / "budget_miou_vs_gmacs.png").is_file()
    assert main([*base, "--budget", "0.5"]) == 0
    assert main([*base, "--budget", "-1"]) == 2
    one_line_error(capsys, "budget -1.0 fraction must be a finite number >= 0")
    assert main([*base, "--budget", "0.5", "--budget-sweep", "0.1"]) == 2
    one_line_error(capsys, "not both")
    assert main([*base[:2], "all_hr", *base[3:], "--budget", "0.5"]) == 2
    one_line_error(capsys, "does not rank blocks")


def test_calibrate_and_millisecond_budgets(tmp_path, capsys):
    from segblocks.measuring.calibrate import LatencyCalibration

    out = tmp_path / "cal.json"
    model = ["--policy", "heuristic", "--block-size", "64"]
    argv = ["calibrate", *model, "--size", "128x256", "--threads", "1", "--counts", "3"]
    assert main([*argv, "--runs", "3", "--warmup", "1", "--out", str(out)]) == 0
    cal = LatencyCalibration.load(out, model="swiftnet_rn18", size=(128, 256), threads=1)
    assert [k for k, _ in cal.points] == [0, 4, 8] and cal.per_block_ms > 0
    base = ["eval", *model, *EVAL, "--calibration", str(out)]
    torch.set_num_threads(1)
    lo, hi = cal.intercept_ms, cal.intercept_ms + 8 * cal.per_block_ms
    assert main([*base, "--budget", f"{(lo + hi) / 2}ms"]) == 0
    with pytest.raises(ValueError, match="measured with dtype 'float32', this run uses 'bfloat16'"):
        LatencyCalibration.load(out, dtype="bfloat16")
    assert main([*base, "--dtype", "bfloat16", "--budget", "10ms"]) == 2
    one_line_error(capsys, "measured with dtype", "segblocks calibrate")
    with pytest.raises(ValueError, match="measured at 128x256 with block size 64"):
        cal.cost(256, 256, 64)
    # an image size is measured padded to whole blocks, as the model runs it
    padded = tmp_path / "padded.json"
    assert main([*argv, "--runs", "1", "--size", "100x256", "--out", str(padded)]) == 0
    assert LatencyCalibration.load(padded).size == (128, 256)


def test_infer_with_a_budget(tmp_path, images, capsys):
    out = tmp_path / "o"
    argv = ["infer", str(images), str(out), "--policy", "heuristic", "--block-size", "64"]
    assert main([*argv, "--budget", "0"]) == 0
    hr = np.asarray(Image.open(out / "a_hr.png"))
    assert main([*argv, "--budget", "1.0"]) == 0
    assert not np.array_equal(hr, np.asarray(Image.open(out / "a_hr.png")))
    assert main([*argv, "--budget", "fast"]) == 2
    one_line_error(capsys, "budget 'fast' is not a number")


def test_bench_with_budgets(capsys):
    base = ["bench", "--size", "128x256", "--block-size", "64", "--hr", "0.5", "--runs", "1"]
    assert main([*base, "--warmup", "0", "--threads", "1", "--budget", "0.25,2gmacs"]) == 0
    out = capsys.readouterr().out
    assert "0.25 (25%)" in out and "2gmacs (" in out
    assert main([*base, "--budget=-2ms"]) == 2
    assert "must be a finite number >= 0" in capsys.readouterr().out
    assert main([*base, "--budget", "30ms"]) == 2
    out = capsys.readouterr().out
    # a CLI user is told the options, not only the Python attribute (issue 18)
    assert "needs a latency calibration" in out
    assert "segblocks calibrate" in out and "--calibration cal.json" in out

"""``segblocks infer`` on videos and frame streams (issue 17, item 5): one overlay video and
frames.csv, corrupt frames skipped, bad inputs refused in one line, budgets summarised.

The videos are written here with PyAV (no binary fixture); skipped without PyAV."""

from __future__ import annotations

import csv
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

av = pytest.importorskip("av")

from segblocks.cli import main  # noqa: E402
from segblocks.data import PALETTE  # noqa: E402
from segblocks.data.transforms import Normalize  # noqa: E402
from segblocks.errors import InputError  # noqa: E402
from segblocks.evaluation.video import infer_stream, list_frames, natural_key  # noqa: E402
from segblocks.models import create_model  # noqa: E402
from segblocks.models.segblocks_model import SegBlocksModel  # noqa: E402

from ..test_cli_errors import one_line_error  # noqa: E402

H, W = 64, 96  # frames: padded to 64x128 by 64-px blocks (a 1x2 grid)
BLOCKS = ["--block-size", "64", "--no-progress"]


def _frame(i: int, h: int = H, w: int = W) -> np.ndarray:
    """A synthetic frame: a bar growing with ``i`` over a gradient, and a square."""
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 1] = np.linspace(0, 200, w, dtype=np.uint8)[None]
    a[:, : min(w, 8 * (i + 1)), 0] = 255
    a[h // 4 : h // 2, w // 3 : w // 2, 2] = 220
    return a


def write_video(path: Path, n: int, codec: str = "mpeg4", fps: int = 12, h=H, w=W) -> Path:
    """An ``n``-frame video written with PyAV."""
    pix = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    c = av.open(str(path), "w")
    s = c.add_stream(codec, rate=fps)
    s.width, s.height, s.pix_fmt = w, h, pix
    for i in range(n):
        f = av.VideoFrame.from_ndarray(_frame(i, h, w), format="rgb24")
        f.pts = i
        for p in s.encode(f):
            c.mux(p)
    for p in s.encode():
        c.mux(p)
    c.close()
    return path


def read_video(path: Path) -> tuple[list[np.ndarray], object]:
    with av.open(str(path)) as c:
        s = c.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(s)]
        return frames, s


def read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    net = create_model("swiftnet_rn18", num_classes=9, decoder_width=16)
    return SegBlocksModel(net, "heuristic", 64, tau=0.5).eval()


def _stream(model, source, out, **kw):
    notes: list[str] = []
    kw.setdefault("progress", False)
    summary = infer_stream(
        model, source, out, normalize=Normalize(), palette=PALETTE, report=notes.append, **kw
    )
    return summary, notes


# ------------------------------------------------------------------------ video in, video out
def test_video_to_overlay_video_and_csv(model, tmp_path):
    src = write_video(tmp_path / "clip.mp4", 10, fps=12)
    s, notes = _stream(model, src, tmp_path / "out", class_names=[f"c{k}" for k in range(9)])
    assert notes == [] and s.frames == 10 and s.skipped == 0 and s.size == (W, H)
    assert s.video == tmp_path / "out" / "clip_overlay.mp4" and s.fps == 12
    frames, stream = read_video(s.video)
    assert len(frames) == 10 and frames[0].shape == (H, W, 3)
    assert stream.average_rate == 12 and stream.codec_context.name in ("h264", "mpeg4")
    rows = read_csv(tmp_path / "out" / "frames.csv")
    assert list(rows[0]) == ["frame", "latency_ms", "hr_percent", "gmacs"]
    assert [int(r["frame"]) for r in rows] == list(range(10))
    cost = model.mac_cost(64, 128)  # 2 blocks: MACs affine in the HR count, policy included
    for r in rows:
        hr = float(r["hr_percent"])
        assert hr in (0.0, 50.0, 100.0) and float(r["latency_ms"]) > 0
        assert float(r["gmacs"]) == pytest.approx(cost(round(hr / 50)), rel=1e-5)
    assert (tmp_path / "out" / "legend.csv").is_file()
    # the overlay: class colours blended over the frame, not the frame itself
    assert np.abs(frames[3].astype(int) - _frame(3).astype(int)).mean() > 10
    assert s.mean_latency_ms > 0 and s.over is None and "10 frames" in s.lines()[0]


def test_dense_network_is_all_hr(tmp_path):
    torch.manual_seed(0)
    net = create_model("swiftnet_rn18", num_classes=9, decoder_width=16)
    dense = SegBlocksModel(net, "dense", 64).eval()
    src = write_video(tmp_path / "d.mkv", 3)
    s, _ = _stream(dense, src, tmp_path / "out")
    from segblocks.measuring.macs import count_macs_dense

    want = count_macs_dense(net, torch.zeros(1, 3, 64, 128)).total / 1e9
    assert s.hr_percent == [100.0] * 3 and s.gmacs == pytest.approx([want] * 3)
    s, _ = _stream(net, src, tmp_path / "plain")  # a plain network: its own MACs, all HR
    assert s.hr_percent == [100.0] * 3 and s.frames == 3


def test_max_frames_and_fps(model, tmp_path):
    src = write_video(tmp_path / "clip.avi", 8)
    s, _ = _stream(model, src, tmp_path / "out", max_frames=3, fps=5)
    frames, stream = read_video(s.video)
    assert len(frames) == 3 == len(read_csv(s.csv)) and stream.average_rate == 5


# ------------------------------------------------------------------------ frame folders
def test_natural_order():
    names = ["frame_10.png", "frame_2.png", "frame_1.png", "Frame_3.png"]
    assert sorted(names, key=natural_key) == [
        "frame_1.png",
        "frame_2.png",
        "Frame_3.png",
        "frame_10.png",
    ]


def test_frame_folder_stream_in_natural_order(model, tmp_path):
    d = tmp_path / "frames"
    d.mkdir()
    n = 12
    for i in range(1, n + 1):  # frame i: uniform grey 15 * i (odd size: 65x97)
        Image.fromarray(np.full((65, 97, 3), 15 * i, np.uint8)).save(d / f"frame_{i}.png")
    (d / "notes.txt").write_text("not a frame")
    files, others = list_frames(d)
    assert [f.name for f in files][:3] == ["frame_1.png", "frame_2.png", "frame_3.png"]
    assert [f.name for f in others] == ["notes.txt"]
    s, notes = _stream(model, d, tmp_path / "out", alpha=0.0)  # alpha 0: the frames themselves
    assert notes == ["skipped 1 file(s) that are not images Pillow reads: notes.txt"]
    assert s.video.name == "frames_overlay.mp4" and s.fps == 10 and s.size == (97, 65)
    frames, stream = read_video(s.video)
    assert len(frames) == n and (stream.width, stream.height) == (98, 66)  # even for yuv420p
    grey = [float(np.median(f[:60, :90])) for f in frames]  # outlines are thin: the median
    assert np.allclose(grey, [15 * i for i in range(1, n + 1)], atol=4), grey


def test_corrupt_image_in_a_folder_is_skipped(tmp_path, capsys):
    d = tmp_path / "seq"
    d.mkdir()
    for i in range(5):
        Image.fromarray(_frame(i)).save(d / f"{i:03d}.png")
    (d / "002.png").write_bytes(b"garbage, not a png")
    out = tmp_path / "out"
    assert main(["infer", str(d), str(out), "--stream", *BLOCKS]) == 0
    cap = capsys.readouterr()
    assert "002.png" in cap.err and "skipped" in cap.err and "Traceback" not in cap.err
    assert "4 frames" in cap.out and "1 frame skipped" in cap.out
    assert [int(r["frame"]) for r in read_csv(out / "frames.csv")] == [0, 1, 3, 4]
    assert len(read_video(out / "seq_overlay.mp4")[0]) == 4


def test_folder_without_stream_keeps_per_image_outputs(tmp_path, capsys):
    d = tmp_path / "seq"
    d.mkdir()
    Image.fromarray(_frame(0)).save(d / "f_1.png")
    out = tmp_path / "out"
    assert main(["infer", str(d), str(out), "--block-size", "64"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["f_1_hr.png", "f_1_seg.png", "legend.csv"]
    assert main(["infer", str(d), str(out), "--block-size", "64", "--max-frames", "2"]) == 2
    one_line_error(capsys, "--max-frames apply to a video file or a --stream folder")


def _corrupt_packet(src: Path, dst: Path, k: int) -> None:
    """``src`` with the bytes of its ``k``-th video packet replaced by random bytes."""
    with av.open(str(src)) as c:
        packets = [bytes(p) for p in c.demux(c.streams.video[0]) if p.size]
    data = bytearray(src.read_bytes())
    j = data.find(packets[k])
    assert j > 0
    rng = np.random.default_rng(1)
    data[j : j + len(packets[k])] = rng.integers(0, 256, len(packets[k]), np.uint8).tobytes()
    dst.write_bytes(bytes(data))


def test_corrupt_packet_in_a_video_is_skipped(model, tmp_path, capsys):
    try:
        av.codec.Codec("mjpeg", "w")
    except Exception:  # noqa: BLE001
        pytest.skip("PyAV's FFmpeg has no mjpeg encoder")
    good = write_video(tmp_path / "good.avi", 8, codec="mjpeg")  # intra-only: one frame a packet
    bad = tmp_path / "bad.avi"
    _corrupt_packet(good, bad, 3)
    out = tmp_path / "out"
    assert main(["infer", str(bad), str(out), *BLOCKS, "--policy", "heuristic"]) == 0
    cap = capsys.readouterr()
    assert "bad.avi: frame 3 cannot be decoded" in cap.err and "skipped" in cap.err
    assert "7 frames" in cap.out and "1 frame skipped" in cap.out
    assert [int(r["frame"]) for r in read_csv(out / "frames.csv")] == [0, 1, 2, 4, 5, 6, 7]
    assert len(read_video(out / "bad_overlay.mp4")[0]) == 7


# ------------------------------------------------------------------------ bad inputs
def test_not_a_video(tmp_path, capsys):
    fake = tmp_path / "notes.mp4"
    fake.write_text("this is a text file")
    out = tmp_path / "out"
    assert main(["infer", str(fake), str(out), *BLOCKS]) == 2
    one_line_error(capsys, "cannot read video", str(fake), "Invalid data")
    assert not out.exists()
    # --stream reads a file as a video whatever its suffix
    other = tmp_path / "clip.txt"
    other.write_text("text")
    assert main(["infer", str(other), str(out), "--stream", *BLOCKS]) == 2
    one_line_error(capsys, "cannot read video", str(other))
    assert not out.exists()


def _no_frames_video(path: Path) -> Path:
    c = av.open(str(path), "w")
    s = c.add_stream("mpeg4", rate=10)
    s.width, s.height, s.pix_fmt = W, H, "yuv420p"
    c.start_encoding()  # header only
    c.close()
    return path


def test_zero_frames_write_nothing(tmp_path, capsys):
    empty = _no_frames_video(tmp_path / "empty.avi")
    with av.open(str(empty)) as c:
        assert len(c.streams.video) == 1
    out = tmp_path / "out"
    assert main(["infer", str(empty), str(out), *BLOCKS]) == 2
    one_line_error(capsys, "no frame in", str(empty), "nothing written")
    assert not out.exists()
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "readme.md").write_text("no images")
    assert main(["infer", str(tmp_path / "nothing"), str(out), "--stream", *BLOCKS]) == 2
    one_line_error(capsys, "no frames in", "nothing")
    assert not out.exists()
    # every frame unreadable: nothing written either
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "1.png").write_bytes(b"garbage")
    assert main(["infer", str(tmp_path / "bad"), str(out), "--stream", *BLOCKS]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "1.png" in err[0] and "skipped" in err[0]  # the note, then the error
    assert err[1].startswith("segblocks infer: error: no decodable frame in") and len(err) == 2
    assert not out.exists()


def test_audio_only_file(tmp_path, capsys):
    path = tmp_path / "sound.mp4"
    c = av.open(str(path), "w")
    s = c.add_stream("aac", rate=8000)
    frame = av.AudioFrame.from_ndarray(
        np.zeros((1, 1024), np.float32), format="fltp", layout="mono"
    )
    frame.sample_rate, frame.pts = 8000, 0
    for p in [*s.encode(frame), *s.encode()]:
        c.mux(p)
    c.close()
    assert main(["infer", str(path), str(tmp_path / "out"), *BLOCKS]) == 2
    one_line_error(capsys, str(path), "has no video stream")


def test_unwritable_output(tmp_path, capsys):
    src = write_video(tmp_path / "clip.mp4", 3)
    taken = tmp_path / "taken"
    taken.write_text("x")
    assert main(["infer", str(src), str(taken), *BLOCKS]) == 2
    one_line_error(capsys, str(taken), "is a file")
    assert main(["infer", str(src), str(taken / "sub"), *BLOCKS]) == 2
    one_line_error(capsys, "cannot create output folder", str(taken))
    assert taken.read_text() == "x"


def test_missing_pyav(tmp_path, capsys, monkeypatch):
    src = write_video(tmp_path / "clip.mp4", 2)
    monkeypatch.setitem(sys.modules, "av", None)  # import av raises ImportError
    assert main(["infer", str(src), str(tmp_path / "out"), *BLOCKS]) == 2
    one_line_error(capsys, "reading video needs PyAV: pip install 'segblocks[video]'")
    (tmp_path / "f").mkdir()
    Image.fromarray(_frame(0)).save(tmp_path / "f" / "1.png")
    assert main(["infer", str(tmp_path / "f"), str(tmp_path / "out"), "--stream", *BLOCKS]) == 2
    one_line_error(capsys, "writing the overlay video needs PyAV")
    assert not (tmp_path / "out").exists()


def test_library_errors(model, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.mp4"):
        _stream(model, tmp_path / "nope.mp4", tmp_path / "out")
    src = write_video(tmp_path / "c.mp4", 2)
    with pytest.raises(InputError, match="frame rate"):
        _stream(model, src, tmp_path / "out", fps=0)
    with pytest.raises(ValueError, match="needs a latency calibration"):
        _stream(model, src, tmp_path / "out", budget="30ms")  # raised on the first frame
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------ budgets
SUMMARY = re.compile(r"(\d+) of (\d+) frames \((\d+) %\) exceeded the (.+?)(,|;)")


def test_fraction_budget_summary(tmp_path, capsys):
    src = write_video(tmp_path / "clip.mp4", 6, h=128, w=128)  # 2x2 blocks
    out = tmp_path / "out"
    argv = ["infer", str(src), str(out), *BLOCKS, "--policy", "heuristic", "--budget", "0.3"]
    assert main(argv) == 0
    text = capsys.readouterr().out
    m = SUMMARY.search(text)
    assert m and m.groups()[:4] == ("0", "6", "0", "budget of 30 % of the blocks"), text
    rows = read_csv(out / "frames.csv")
    assert list(rows[0])[-1] == "over_budget_percent"
    for r in rows:  # 30 % of 4 blocks: 1 block
        assert float(r["hr_percent"]) == 25.0
        assert float(r["over_budget_percent"]) == pytest.approx(-5.0)


def test_millisecond_budget_summary(tmp_path, capsys):
    cal = tmp_path / "cal.json"
    model = ["--policy", "heuristic", "--block-size", "64"]
    argv = ["calibrate", *model, "--size", "128x128", "--threads", "1", "--counts", "3"]
    assert main([*argv, "--runs", "3", "--warmup", "1", "--out", str(cal)]) == 0
    from segblocks.measuring.calibrate import LatencyCalibration

    c = LatencyCalibration.load(cal)
    budget = c.intercept_ms + 2 * c.per_block_ms  # between all-LR and all-HR
    torch.set_num_threads(1)
    src = write_video(tmp_path / "clip.mp4", 6, h=128, w=128)
    out = tmp_path / "out"
    argv = ["infer", str(src), str(out), *model, "--no-progress", "--calibration", str(cal)]
    assert main([*argv, "--budget", f"{budget}ms"]) == 0
    text = capsys.readouterr().out
    m = SUMMARY.search(text)
    assert m and m.group(2) == "6" and m.group(4) == f"{budget:g} ms budget", text
    rows = read_csv(out / "frames.csv")
    over = [float(r["over_budget_ms"]) for r in rows]
    for r, o in zip(rows, over, strict=True):
        # 2 of 4 blocks fit the calibration; the governor may leave margin (never more)
        assert float(r["hr_percent"]) <= 50.0
        assert o == pytest.approx(float(r["latency_ms"]) - budget, abs=2e-3)
    k = sum(o > 0 for o in over)
    assert int(m.group(1)) == k and int(m.group(3)) == round(100 * k / 6)
    if k:
        # the summary prints 3 significant digits of the unrounded excess, frames.csv rounds
        # to 1e-3 ms: compare the numbers, not their text
        worst = max(over)
        w = re.search(r"worst by ([0-9.]+) ms \(([0-9.]+) %\)", text)
        assert w and float(w.group(1)) == pytest.approx(worst, rel=5e-3, abs=2e-3), text
        assert float(w.group(2)) == pytest.approx(100 * worst / budget, abs=0.06)
    else:
        assert "under it" in text
    # a calibration for another size is refused before anything is written
    other = write_video(tmp_path / "wide.mp4", 2, h=64, w=128)
    argv = ["infer", str(other), str(tmp_path / "o2"), *model, "--calibration", str(cal)]
    assert main([*argv, "--no-progress", "--budget", f"{budget}ms"]) == 2
    one_line_error(capsys, "measured at 128x128", "segblocks calibrate --size 64x128")
    assert not (tmp_path / "o2").exists()


def test_latency_governor_leaves_the_margin_the_frames_need():
    from segblocks.evaluation.video import LatencyGovernor

    g = LatencyGovernor(40.0, window=4, start=1.05)
    assert g.budget().value == pytest.approx(40.0 / 1.05)  # headroom before any frame
    for ratio in (1.2, 1.0, 1.0, 1.0):
        g.update(ratio * 30.0, 30.0)
    assert g.budget().value == pytest.approx(40.0 / 1.2)  # the slowest recent frame
    for _ in range(4):
        g.update(0.9 * 30.0, 30.0)
    assert g.correction == pytest.approx(0.9)  # faster than calibrated: more blocks
    g.update(float("nan"), 30.0)
    assert g.correction == pytest.approx(0.9)

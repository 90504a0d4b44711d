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

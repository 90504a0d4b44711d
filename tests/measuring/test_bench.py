from segblocks.cli import main


def test_bench_cli_small(capsys):
    args = ["bench", "--size", "128x256", "--block-size", "64", "--hr", "0.5,1.0"]
    assert main(args + ["--runs", "1", "--warmup", "0", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "dense" in out and "50% HR" in out and "100% HR" in out
    lines = [ln for ln in out.splitlines() if ln.strip().startswith("100% HR")]
    assert lines and float(lines[0].split()[-2]) == 1.0  # all-HR: theory 1.000


def test_bench_cli_rejects_bad_size(capsys):
    assert main(["bench", "--size", "100x256", "--block-size", "64", "--runs", "1"]) == 2
    assert "128x256" in capsys.readouterr().out


def test_bench_cli_bfloat16(capsys):
    args = ["bench", "--size", "128x128", "--block-size", "64", "--hr", "0.5", "--runs", "1"]
    assert main(args + ["--warmup", "0", "--threads", "1", "--dtype", "bfloat16"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16" in out and "50% HR" in out


def test_bench_model_optimize_keeps_the_macs():
    from segblocks.measuring import bench_model

    kw = dict(fractions=(0.5,), runs=1, warmup=0, num_classes=3)
    fast = bench_model("swiftnet_rn18", (128, 128), 64, **kw)
    slow = bench_model("swiftnet_rn18", (128, 128), 64, optimize=False, **kw)
    assert [r["gmacs"] for r in fast] == [r["gmacs"] for r in slow]
    assert all(r["ms"] > 0 for r in fast + slow)

from segblocks.engine.demo import run_demo

TINY = [
    "dataset_kwargs.num_images=4",
    "dataset_kwargs.height=128",
    "dataset_kwargs.width=256",
    "crop_size=[128,128]",
    "batch_size=2",
    "model_kwargs.decoder_width=32",
    "policy_kwargs.width=8",
]


def test_demo_writes_report(tmp_path):
    # the static run gets policy_kwargs={} from the demo; the override below re-adds width
    # only for the learned run, so pass it via overrides only where valid
    res = run_demo(tmp_path, epochs=1, val_images=2, val_size=(128, 256), overrides=TINY[:-1])
    for f in ("report.md", "results.json", "fig7_miou_vs_gmacs.png", "fig8_hr_histogram.png"):
        assert (tmp_path / f).exists(), f
    assert (tmp_path / "fig9_decisions_0.png").exists()
    assert len(res["rows"]) == 3
    assert "thin_hr_rate" in res["thin_objects"]

"""Config validation in one place: one-line ConfigErrors naming the key, never a traceback from
deep inside, never a silent change (500 random configs), resume config comparison."""

from __future__ import annotations

import copy
import math
import random

import pytest
import yaml

from segblocks.errors import ConfigError
from segblocks.training.config import (
    TrainConfig,
    apply_overrides,
    check_resume_config,
    load_config,
    packaged_config_path,
    packaged_configs,
)

BASE = yaml.safe_load(packaged_config_path("procedural_tiny").read_text())


def test_packaged_configs_by_name_and_path():
    assert packaged_configs() == [
        "camvid/ablation_block128",
        "camvid/ablation_block64",
        "camvid/ablation_pad_strided",
        "camvid/ablation_pad_zero",
        "camvid/ablation_random_tau04",
        "camvid/ablation_width64",
        "camvid/heuristic_tau02",
        "camvid/heuristic_tau04",
        "camvid/long_heuristic_tau02",
        "camvid/long_heuristic_tau02_block64",
        "camvid/long_heuristic_tau03_block64",
        "camvid/long_heuristic_tau04",
        "camvid/long_heuristic_tau04_block64",
        "camvid/long_segblocks_tau02",
        "camvid/long_segblocks_tau04",
        "camvid/long_static_06",
        "camvid/long_static_08",
        "camvid/long_static_full",
        "camvid/segblocks_tau02",
        "camvid/segblocks_tau04",
        "camvid/static_06",
        "camvid/static_08",
        "camvid/static_full",
        "camvid/static_full_ft",
        "camvid_rn18",
        "cityscapes_rn18",
        "mapillary_effl1",
        "procedural_tiny",
    ]
    for name in packaged_configs():
        by_name = load_config(name)
        assert (
            by_name == load_config(f"{name}.yaml") == load_config(str(packaged_config_path(name)))
        )
    with pytest.raises(ConfigError, match="did you mean 'procedural_tiny'"):
        packaged_config_path("procedural_tiy")


def test_defaults_are_valid_but_need_a_crop_to_train():
    cfg = TrainConfig()
    with pytest.raises(ConfigError, match="'crop_size': random scaling .* needs a crop"):
        cfg.check_trainable()
    TrainConfig(scale_min=1.0, scale_max=1.0).check_trainable()


def test_numbers_are_normalised_not_changed():
    cfg = load_config("procedural_tiny", ["lr=1e-4", "epochs=2.0", "gamma=3", "min_lr=0"])
    assert cfg.lr == 1e-4 and isinstance(cfg.lr, float)  # YAML 1.1 reads 1e-4 as a string
    assert cfg.epochs == 2 and isinstance(cfg.epochs, int)
    assert cfg.gamma == 3.0 and isinstance(cfg.gamma, float)


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["lr=-1"], "'lr': -1 must be > 0"),
        (["lr=0"], "'lr': 0 must be > 0"),
        (["resume=maybe"], "'resume': 'maybe' must be true or false"),
        (["crop_size=[100,100]"], "not a multiple of block_size 64"),
        (["epochs=1.7"], "'epochs': 1.7 must be an integer"),
        (["lr=abc"], "'lr': 'abc' is not a number"),
        (["gamma=high"], "'gamma': 'high' is not a number"),
        (["crop_size=[-5,128]"], "'crop_size': -5 must be >= 1"),
        (["device=cdua"], "'device': 'cdua' is not a device"),
        (["jitter=-1"], "'jitter': -1 must be >= 0"),
        (["num_workers=-1"], "'num_workers': -1 must be >= 0"),
        (["block_size=30"], "'block_size': 30 must be a multiple of 64"),
        (["dataset=camvid"], "'data_root': dataset camvid needs data_root"),
        (["model_kwargs.decodr_width=8"], "unknown key 'decodr_width' for model swiftnet_rn18"),
        (["lr=nan"], "'lr': 'nan' must be a finite number"),
        (["min_lr=0.1"], "'min_lr': 0.1 must be <= lr"),
        (["policy=all_hr"], "policy all_hr takes no options, got 'width'; set policy_kwargs={}"),
        (["resume=true", "overwrite=true"], "'resume' and 'overwrite' are both true"),
        (["model_kwargs.output_stride=8"], "'model_kwargs.output_stride': 8 must be one of 16, 32"),
        (["dataset_kwargs.height=8"], "'dataset_kwargs.height': 8 must be >= 32"),
        (["seed=-3"], "'seed': -3 must be >= 0"),
        (["allow_config_change=epochs"], "must be a list of config keys"),
        (["out_dir=null"], "'out_dir': None must be a non-empty path string"),
    ],
)
def test_probe_values_rejected_in_one_line(overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config("procedural_tiny", overrides)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_yaml_error_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("epochs: 2\n  lr: [1e-4\n")
    with pytest.raises(ConfigError, match=rf"config file {bad}: invalid YAML at line 2"):
        load_config(bad)
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "typo.yaml").write_text("epochs: 2\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match="typo.yaml: unknown config key 'learning_rate'"):
        load_config(tmp_path / "typo.yaml")
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


# ----------------------------------------------------------------------------- resume
def test_check_resume_config():
    stored = load_config("procedural_tiny").to_dict()
    same = load_config("procedural_tiny", ["num_workers=2", "device=cpu", "resume=true"])
    assert check_resume_config(stored, same, "last.pt") == []  # run keys may change
    more = load_config("procedural_tiny", ["epochs=9", "allow_config_change=[epochs]"])
    assert check_resume_config(stored, more, "last.pt") == ["epochs"]
    with pytest.raises(ConfigError, match=r"tau 0.4 -> 0.3, epochs 5 -> 9.*\[tau, epochs\]"):
        check_resume_config(stored, load_config("procedural_tiny", ["epochs=9", "tau=0.3"]), "x")
    width = load_config("procedural_tiny", ["model_kwargs.decoder_width=32"])
    width.allow_config_change = ["model_kwargs"]
    with pytest.raises(ConfigError, match="decoder_width 64 -> 32.*cannot change on resume"):
        check_resume_config(stored, width, "x")
    # keys missing from an older checkpoint's config count as their defaults
    old = {k: v for k, v in stored.items() if k not in ("overwrite", "allow_config_change")}
    assert check_resume_config(old, load_config("procedural_tiny"), "x") == []


# ------------------------------------------------------------------------------- fuzz
_ANY = [
    0,
    1,
    -1,
    2,
    3,
    7,
    32,
    64,
    128,
    256,
    1000,
    10**30,
    0.0,
    0.5,
    1.7,
    -0.3,
    1e-4,
    2.0,
    1e9,
    float("nan"),
    float("inf"),
    True,
    False,
    None,
    "",
    "abc",
    "1e-4",
    "2",
    "cpu",
    "cuda:0",
    "cdua",
    "learned",
    "all_hr",
    "random",
    "ce",
    "bootstrap",
    "camvid",
    "procedural",
    "swiftnet_rn18",
    "swiftnet_effl1",
    "x" * 200,
    [],
    [128, 128],
    [100, 100],
    [-5, 128],
    [1, 2, 3],
    [64, 256],
    ["epochs"],
    ["bogus"],
    {},
    {"width": 8},
    {"bogus": 1},
    {"num_images": 4},
    {"decoder_width": 32},
    [[1]],
]
_GOOD = {
    "model": ["swiftnet_rn18", "swiftnet_effl1", "swiftnet_rn50"],
    "num_classes": [None, 3, 19],
    "tau": [0.0, 0.2, 1, 0.5],
    "block_size": [64, 128, 256],
    "policy": ["learned", "random", "heuristic", "all_lr"],
    "policy_kwargs": [{}, {"width": 16}, {"layers": 2}, {"tau": 0.2}],
    "crop_size": [128, [256, 128], [256, 256], None],
    "scale_min": [0.5, 1.0, "0.75"],
    "jitter": [0, 0.1, 1],
    "batch_size": [1, 4, 2.0],
    "epochs": [1, 10, 3.0],
    "lr": [1e-3, "1e-4", 0.01],
    "min_lr": [0, 1e-7],
    "device": ["auto", "cpu", "cuda:1"],
    "criterion": ["ce", "bootstrap"],
    "iters_per_epoch": [None, 5],
    "seed": [0, 123],
    "num_workers": [0, 2],
    "dataset_kwargs": [{"num_images": 8}, {"height": 64, "width": 64}],
    "val_kwargs": [{}, {"num_images": 1}],
    "model_kwargs": [{}, {"decoder_width": 16}, {"output_stride": 16}],
    "allow_config_change": [[], ["epochs"], ["lr", "tau"]],
    "hflip": [True, False],
    "amp": [True, False],
    "data_root": [None, "data/x"],
}
_YAML_TEXTS = [
    "[1,",
    "{a: ",
    ":",
    "- - -",
    "!!python/object:os.system",
    "&a *a",
    "0x10",
    "1_000",
    "~",
    "null",
    ".nan",
    "yes",
    "off",
    "'quoted'",
    "[256, 256]",
    "{width: 8}",
    "1e-4",
    "-0",
    "@",
    "`x`",
    "\t",
    "%",
    "2.5e3",
    "[[1, 2]]",
    "{bogus: 1}",
    "true",
]
_FIELDS = list(TrainConfig.__dataclass_fields__)


def _same(a, b) -> bool:
    """Equal up to the documented normalisations (int -> float, "1e-4" -> 1e-4, 2.0 -> 2)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return float(a) == float(b) or (math.isnan(a) and math.isnan(b))
    if isinstance(a, str) and isinstance(b, float):
        return float(a) == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b


def _case(rng: random.Random) -> tuple[dict, list[str], set[str]]:
    data = copy.deepcopy(BASE)
    overrides: list[str] = []
    touched: set[str] = set()
    for _ in range(rng.randint(1, 3)):
        key = rng.choice(_FIELDS)
        pick = rng.random()
        if pick < 0.4:  # a plausible value
            value = rng.choice(_GOOD.get(key, _ANY))
            data[key] = value
        elif pick < 0.7:  # anything
            data[key] = rng.choice(_ANY)
        elif pick < 0.85:  # a key=value override, text through YAML
            overrides.append(f"{key}={rng.choice(_YAML_TEXTS)}")
        elif pick < 0.95:  # a dotted override into a mapping field (or not)
            sub = rng.choice(["width", "decoder_width", "num_images", "bogus", "tau", "size"])
            overrides.append(f"{key}.{sub}={rng.choice(_YAML_TEXTS + ['8', '64', '0.3'])}")
        else:  # a key that does not exist
            key = rng.choice(["epoch", "learning_rate", "modle", "crop"])
            data[key] = 1
        touched.add(key)
    return data, overrides, touched


def test_fuzz_500_configs():
    accepted = rejected = 0
    for i in range(500):
        data, overrides, touched = _case(random.Random(i))
        try:
            merged = apply_overrides(data, overrides)
            cfg = TrainConfig.from_dict(merged)
            cfg.check_trainable()
        except ConfigError as e:
            msg = str(e)
            assert msg and "\n" not in msg and len(msg) < 700, (i, msg)
            names = [*touched, "override", "unknown config key"]
            assert any(n in msg for n in names), (i, touched, overrides, msg)
            rejected += 1
            continue
        except Exception as e:  # noqa: BLE001 - the point: nothing else may escape
            pytest.fail(f"case {i}: {type(e).__name__}: {e} for {touched} {overrides}")
        for key, value in merged.items():  # accepted: nothing silently changed
            assert _same(value, getattr(cfg, key)), (i, key, value, getattr(cfg, key))
        accepted += 1
    assert accepted >= 50 and rejected >= 200, (accepted, rejected)


def test_init_from_and_zero_epochs(tmp_path):
    with pytest.raises(ConfigError, match="'epochs': 0 trains nothing and needs init_from"):
        load_config("procedural_tiny", ["epochs=0"])
    cfg = load_config("procedural_tiny", [f"init_from={tmp_path / 'missing.pt'}"])
    with pytest.raises(ConfigError, match="'init_from': .* is not a file"):
        cfg.check_trainable()
    assert load_config("camvid/static_08").policy_kwargs == {"scale": 0.8}

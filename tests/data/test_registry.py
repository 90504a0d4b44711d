"""The dataset registry: one name -> class table for the CLI, the trainer and the config."""

from __future__ import annotations

import argparse

import pytest

from segblocks.data import (
    CamVid,
    Cityscapes,
    MapillaryVistas,
    ProceduralStreets,
    create_dataset,
    dataset_needs_root,
    get_dataset_class,
    list_datasets,
    register_dataset,
)
from segblocks.data.registry import _NEEDS_ROOT, _REGISTRY

from .test_datasets import make_camvid


def test_builtins_in_order():
    assert list_datasets() == ["procedural", "camvid", "cityscapes", "mapillary"]
    assert [get_dataset_class(n) for n in list_datasets()] == [
        ProceduralStreets,
        CamVid,
        Cityscapes,
        MapillaryVistas,
    ]
    assert not dataset_needs_root("procedural") and dataset_needs_root("camvid")


def test_unknown_name_suggests_the_close_one():
    with pytest.raises(
        ValueError, match=r"unknown dataset 'cityscape' \(did you mean 'cityscapes'"
    ):
        get_dataset_class("cityscape")
    with pytest.raises(ValueError, match="available datasets: procedural, camvid"):
        create_dataset("nope")


def test_create_builds_each_kind(tmp_path):
    ds = create_dataset("procedural", root="/ignored", split="val", num_images=2, height=64)
    assert isinstance(ds, ProceduralStreets) and len(ds) == 2 and ds[0][0].shape[-2] == 64
    root = make_camvid(tmp_path / "camvid")
    val = create_dataset("camvid", root, split="val")
    assert isinstance(val, CamVid) and len(val) == len(CamVid(root, split="val"))
    with pytest.raises(ValueError, match="dataset 'camvid' needs root"):
        create_dataset("camvid", split="val")


def test_register_refuses_a_taken_name():
    class Other(ProceduralStreets):
        pass

    with pytest.raises(ValueError, match="'camvid' is already registered"):
        register_dataset("camvid")(Other)
    try:
        assert register_dataset("other_procedural", needs_root=False)(Other) is Other
        assert "other_procedural" in list_datasets()
        assert isinstance(create_dataset("other_procedural", num_images=1), Other)
    finally:
        _REGISTRY.pop("other_procedural", None)
        _NEEDS_ROOT.pop("other_procedural", None)


def test_cli_choices_are_the_registry():
    """``segblocks eval --dataset`` lists the names literally (the parser imports no torch)."""
    from segblocks.cli import eval as eval_cli

    ap = argparse.ArgumentParser()
    eval_cli.add_parser(ap.add_subparsers())
    sub = ap._subparsers._group_actions[0].choices["eval"]
    (action,) = [a for a in sub._actions if "--dataset" in a.option_strings]
    assert list(action.choices) == list_datasets()

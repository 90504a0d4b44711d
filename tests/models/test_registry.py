"""Model registry: names, errors, remembered configuration."""

from __future__ import annotations

import pytest
from torch import nn

from segblocks.models import registry
from segblocks.models.registry import create_model, list_models, register_model
from segblocks.models.swiftnet import SwiftNet


def test_builtin_models_listed():
    names = list_models()
    assert {"swiftnet_rn18", "swiftnet_rn50", "swiftnet_effl1"} <= set(names)
    assert names == sorted(names)


def test_unknown_name_lists_available():
    with pytest.raises(ValueError) as e:
        create_model("swiftnet_rn101")
    msg = str(e.value)
    assert "swiftnet_rn101" in msg
    for name in ("swiftnet_rn18", "swiftnet_rn50", "swiftnet_effl1"):
        assert name in msg


def test_create_model_remembers_name_and_config():
    model = create_model("swiftnet_effl1", num_classes=11, output_stride=16)
    assert isinstance(model, SwiftNet)
    assert model.backbone_name == "tf_efficientnet_lite1"
    assert model.model_name == "swiftnet_effl1"
    assert model.model_config == {"num_classes": 11, "output_stride": 16}
    assert model.num_classes == 11 and model.output_stride == 16


def test_bad_kwargs_raise():
    with pytest.raises(TypeError):
        create_model("swiftnet_rn18", no_such_option=1)


def test_register_custom_model_and_duplicates(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))

    @register_model("tiny_test_model")
    def tiny(width=4):
        return nn.Conv2d(3, width, 1)

    model = create_model("tiny_test_model", width=2)
    assert model.out_channels == 2 and model.model_name == "tiny_test_model"
    assert "tiny_test_model" in list_models()
    # Re-registering the same function (e.g. a module reload) is fine; another one is not.
    register_model("tiny_test_model")(tiny)
    with pytest.raises(ValueError, match="already registered"):

        @register_model("tiny_test_model")
        def other():
            return nn.Identity()

    with pytest.raises(ValueError):
        register_model("")


def test_the_registry_docstring_names_every_model():
    shipped = [n for n in list_models() if not n.startswith("tiny_test")]
    assert len(shipped) == 9 and all(f"``{n}``" in registry.__doc__ for n in shipped)

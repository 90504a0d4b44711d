"""Segmentation models (SwiftNet with timm backbones, torchvision networks through the generic
:class:`SegmentationNet`) and the model registry."""

from .checkpoint import load_checkpoint, load_model, save_checkpoint
from .generic import SegmentationNet, Select
from .registry import create_model, list_models, register_model
from .swiftnet import SwiftNet

__all__ = [
    "create_model",
    "list_models",
    "register_model",
    "save_checkpoint",
    "load_checkpoint",
    "load_model",
    "SwiftNet",
    "SegmentationNet",
    "Select",
]

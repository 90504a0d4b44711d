"""Datasets and paired transforms.

:class:`ProceduralStreets` is the built-in procedural street-scene data (no files); CamVid,
Cityscapes and Mapillary Vistas read their official layouts in place.
"""

from .datasets import CamVid, Cityscapes, MapillaryVistas, SegmentationDataset
from .procedural import (
    CLASSES,
    IGNORE_INDEX,
    NUM_CLASSES,
    PALETTE,
    THIN_CLASSES,
    ProceduralStreets,
    block_content,
    generate_scene,
    thin_object_mask,
)

__all__ = [
    "SegmentationDataset",
    "CamVid",
    "Cityscapes",
    "MapillaryVistas",
    "CLASSES",
    "NUM_CLASSES",
    "IGNORE_INDEX",
    "PALETTE",
    "THIN_CLASSES",
    "ProceduralStreets",
    "generate_scene",
    "thin_object_mask",
    "block_content",
]

"""Datasets and paired transforms.

:class:`ProceduralStreets` is the built-in procedural street-scene data (no files); CamVid,
Cityscapes and Mapillary Vistas read their official layouts in place. Build any of them by
name with :func:`create_dataset` (:mod:`segblocks.data.registry`).
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
from .registry import (
    create_dataset,
    dataset_needs_root,
    get_dataset_class,
    list_datasets,
    register_dataset,
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
    "create_dataset",
    "dataset_needs_root",
    "get_dataset_class",
    "list_datasets",
    "register_dataset",
]

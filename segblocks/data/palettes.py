"""Class colours and names per dataset, for drawing segmentations.

:func:`palette_for` gives the palette and class names of a dataset by name: the procedural
scenes', Cityscapes' (the official trainId colours) and CamVid's (the SegNet colours) own, and a
generic palette of distinct colours (:func:`generic_palette`) for any other dataset or class
count (e.g. Mapillary Vistas' 65 classes, or a model with another number of classes).
"""

from __future__ import annotations

__all__ = [
    "CITYSCAPES_PALETTE",
    "CAMVID_PALETTE",
    "generic_palette",
    "palette_for",
    "dataset_classes",
]

#: Cityscapes trainId colours (cityscapesScripts ``labels.py``), in trainId order.
CITYSCAPES_PALETTE: list[tuple[int, int, int]] = [
    (128, 64, 128),  # road
    (244, 35, 232),  # sidewalk
    (70, 70, 70),  # building
    (102, 102, 156),  # wall
    (190, 153, 153),  # fence
    (153, 153, 153),  # pole
    (250, 170, 30),  # traffic light
    (220, 220, 0),  # traffic sign
    (107, 142, 35),  # vegetation
    (152, 251, 152),  # terrain
    (70, 130, 180),  # sky
    (220, 20, 60),  # person
    (255, 0, 0),  # rider
    (0, 0, 142),  # car
    (0, 0, 70),  # truck
    (0, 60, 100),  # bus
    (0, 80, 100),  # train
    (0, 0, 230),  # motorcycle
    (119, 11, 32),  # bicycle
]

#: CamVid 11-class colours (SegNet), in class-id order.
CAMVID_PALETTE: list[tuple[int, int, int]] = [
    (128, 128, 128),  # Sky
    (128, 0, 0),  # Building
    (192, 192, 128),  # Pole
    (128, 64, 128),  # Road
    (60, 40, 222),  # Pavement
    (128, 128, 0),  # Tree
    (192, 128, 128),  # SignSymbol
    (64, 64, 128),  # Fence
    (64, 0, 128),  # Car
    (64, 64, 0),  # Pedestrian
    (0, 128, 192),  # Bicyclist
]


def generic_palette(n: int) -> list[tuple[int, int, int]]:
    """``n`` distinct colours (the PASCAL VOC bit-interleaving colour map, without black)."""
    out = []
    for i in range(1, n + 1):
        c, r, g, b = (i - 1) % 255 + 1, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        out.append((r, g, b))
    return out


def dataset_classes(dataset: str | None) -> tuple[str, ...] | None:
    """Class names of a registered dataset by name (:mod:`segblocks.data.registry`: the
    class's ``classes``), or ``None``."""
    from .registry import get_dataset_class, list_datasets

    if dataset not in list_datasets():
        return None
    classes = getattr(get_dataset_class(dataset), "classes", None)
    return tuple(classes) if classes else None


def palette_for(
    dataset: str | None, num_classes: int, class_names=None
) -> tuple[list[tuple[int, int, int]], list[str], str]:
    """``(palette, class names, description)`` for drawing ``num_classes`` classes of
    ``dataset``.

    The dataset's own palette when it has one of the right length (procedural, Cityscapes,
    CamVid), else :func:`generic_palette`. Names: ``class_names`` when given and of the right
    length, else the dataset's, else ``class_0``, ``class_1``, ...
    """
    from . import PALETTE

    own = {"procedural": PALETTE, "cityscapes": CITYSCAPES_PALETTE, "camvid": CAMVID_PALETTE}
    pal = own.get(dataset or "")
    if pal is not None and len(pal) == num_classes:
        palette, what = [tuple(c) for c in pal], f"{dataset} palette"
    else:
        palette, what = generic_palette(num_classes), "generic palette"
    names = list(class_names) if class_names and len(class_names) == num_classes else None
    if names is None:
        known = dataset_classes(dataset)
        names = list(known) if known and len(known) == num_classes else None
    if names is None:
        names = [f"class_{k}" for k in range(num_classes)]
    return palette, [str(n) for n in names], what

"""Semantic-segmentation datasets behind one interface.

Every dataset is a :class:`SegmentationDataset`: ``ds[i]`` returns ``(image, label)`` with

* ``image``: ``float32`` tensor ``[3, H, W]`` with values in ``[0, 1]``;
* ``label``: ``int64`` tensor ``[H, W]`` with values in ``[0, num_classes)`` or
  ``ignore_index`` (255).

An optional paired ``transform(image, label) -> (image, label)`` (see
:mod:`segblocks.data.transforms`) is applied to these tensors.

Bad input handling (shared by all datasets):

* missing root / split folder, or no images in it -> ``FileNotFoundError`` whose message
  shows the expected folder layout; an unknown split name -> ``ValueError``;
* image and label file lists that do not pair up -> ``ValueError`` naming the unmatched files;
* an unreadable image or label -> ``OSError`` naming the file. With ``skip_bad=True`` bad
  files are dropped in two places: (1) at construction, every file's header is opened and
  pairs whose image or label cannot be identified are removed with a warning; (2) at load
  time, a pair that still fails to decode (e.g. a truncated file) is reported with a
  warning and the *next* index is returned instead;
* image / label size mismatch -> ``ValueError`` naming the pair (never skipped);
* label values outside the class set (not in ``[0, num_classes)`` and not ``ignore_index``)
  are set to ``ignore_index`` with a ``warnings.warn`` giving the count.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch.utils.data import Dataset

__all__ = [
    "SegmentationDataset",
    "CamVid",
    "Cityscapes",
    "MapillaryVistas",
    "CITYSCAPES_LABELID_TO_TRAINID",
]

IGNORE_INDEX = 255
_MAX_LISTED = 10

Transform = Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def _list_names(names: Sequence[str]) -> str:
    names = sorted(names)
    shown = ", ".join(names[:_MAX_LISTED])
    if len(names) > _MAX_LISTED:
        shown += f", ... ({len(names) - _MAX_LISTED} more)"
    return shown


def _pair_by_key(
    images: dict[str, Path], labels: dict[str, Path], what: str
) -> list[tuple[Path, Path]]:
    """Pair image and label files by key; raise ``ValueError`` naming unmatched files."""
    only_img = sorted(set(images) - set(labels))
    only_lbl = sorted(set(labels) - set(images))
    if only_img or only_lbl:
        parts = []
        if only_img:
            parts.append(
                f"{len(only_img)} image(s) without a label: "
                + _list_names([str(images[k]) for k in only_img])
            )
        if only_lbl:
            parts.append(
                f"{len(only_lbl)} label(s) without an image: "
                + _list_names([str(labels[k]) for k in only_lbl])
            )
        raise ValueError(f"{what}: image and label files do not pair up; " + "; ".join(parts))
    return [(images[k], labels[k]) for k in sorted(images)]


def _header_ok(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            im.size  # noqa: B018 - header access only
        return True
    except Exception:
        return False


class SegmentationDataset(Dataset):
    """Base class: subclasses fill ``self.samples`` (list of ``(image_path, label_path)``)
    and may override :meth:`map_label` (raw label array -> class ids / ignore)."""

    classes: tuple[str, ...] = ()
    ignore_index: int = IGNORE_INDEX

    def __init__(self, transform: Transform | None = None, skip_bad: bool = False):
        self.transform = transform
        self.skip_bad = skip_bad
        self.samples: list[tuple[Path, Path]] = []
        self._bad: set[int] = set()

    # -- interface --------------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def map_label(self, label: np.ndarray) -> np.ndarray:
        """Map a raw label array to class ids (int64); default: identity."""
        return label.astype(np.int64)

    def resize(self, image: torch.Tensor, label: torch.Tensor):
        """Hook for datasets that resize on load; default: no-op."""
        return image, label

    # -- construction helpers ---------------------------------------------------------
    def _require_dirs(self, name: str, *dirs: Path) -> None:
        """``FileNotFoundError`` naming the first missing folder and the expected layout."""
        for d in dirs:
            if not d.is_dir():
                raise FileNotFoundError(
                    f"{name}: folder {d} not found. Expected layout:\n{self.LAYOUT}"
                )

    def _set_samples(self, samples: list[tuple[Path, Path]], layout: str) -> None:
        if not samples:
            raise FileNotFoundError(f"No images found. Expected layout:\n{layout}")
        if self.skip_bad:
            kept = []
            for img, lbl in samples:
                bad = [str(p) for p in (img, lbl) if not _header_ok(p)]
                if bad:
                    warnings.warn(f"skipping unreadable file(s): {', '.join(bad)}", stacklevel=3)
                else:
                    kept.append((img, lbl))
            if not kept:
                raise FileNotFoundError(
                    f"No readable image/label pairs left. Expected layout:\n{layout}"
                )
            samples = kept
        self.samples = samples

    # -- loading ----------------------------------------------------------------------
    @staticmethod
    def _read_image(path: Path) -> torch.Tensor:
        try:
            with Image.open(path) as im:
                arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
        except Exception as e:
            raise OSError(f"cannot read image file {path}: {e}") from e
        return torch.from_numpy(arr).permute(2, 0, 1).float().div_(255.0)

    @staticmethod
    def _read_label(path: Path) -> np.ndarray:
        try:
            with Image.open(path) as im:
                if im.mode not in ("L", "P", "I", "I;16", "1"):
                    raise ValueError(f"expected a single-channel label image, got mode {im.mode}")
                arr = np.asarray(im).copy()
        except Exception as e:
            raise OSError(f"cannot read label file {path}: {e}") from e
        return arr

    def _load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        img_path, lbl_path = self.samples[index]
        image = self._read_image(img_path)
        raw = self._read_label(lbl_path)
        if tuple(image.shape[1:]) != tuple(raw.shape):
            raise ValueError(
                f"image/label size mismatch: {img_path} is {image.shape[2]}x{image.shape[1]} "
                f"(WxH) but {lbl_path} is {raw.shape[1]}x{raw.shape[0]}"
            )
        lab = self.map_label(raw)
        invalid = ((lab < 0) | (lab >= self.num_classes)) & (lab != self.ignore_index)
        n_bad = int(invalid.sum())
        if n_bad:
            warnings.warn(
                f"{lbl_path}: {n_bad} label pixel(s) outside the class set "
                f"[0, {self.num_classes}) set to ignore ({self.ignore_index})",
                stacklevel=3,
            )
            lab = np.where(invalid, self.ignore_index, lab)
        label = torch.from_numpy(np.ascontiguousarray(lab, dtype=np.int64))
        return self.resize(image, label)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = len(self)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(index)
        for attempt in range(n):
            i = (index + attempt) % n
            if i in self._bad:
                continue
            try:
                image, label = self._load(i)
                break
            except OSError as e:
                if not self.skip_bad:
                    raise
                self._bad.add(i)
                warnings.warn(f"skipping bad sample {i}: {e}", stacklevel=2)
        else:
            raise OSError("no readable samples left in dataset")
        if self.transform is not None:
            image, label = self.transform(image, label)
        return image, label

    def __repr__(self) -> str:
        return f"{type(self).__name__}(n={len(self)}, num_classes={self.num_classes})"


# ======================================================================================
# CamVid (SegNet layout)
# ======================================================================================
class CamVid(SegmentationDataset):
    """CamVid in the SegNet layout: ``{split}/*.png`` images and ``{split}annot/*.png``
    labels with values 0..10 (11 classes) and 11 = void (mapped to 255)."""

    classes = (
        "Sky",
        "Building",
        "Pole",
        "Road",
        "Pavement",
        "Tree",
        "SignSymbol",
        "Fence",
        "Car",
        "Pedestrian",
        "Bicyclist",
    )
    splits = ("train", "val", "test")
    VOID = 11
    LAYOUT = (
        "  <root>/train/*.png       <root>/trainannot/*.png\n"
        "  <root>/val/*.png         <root>/valannot/*.png\n"
        "  <root>/test/*.png        <root>/testannot/*.png\n"
        "(annotations: values 0..10, 11 = void)"
    )

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        skip_bad: bool = False,
    ):
        super().__init__(transform, skip_bad)
        if split not in self.splits:
            raise ValueError(f"CamVid split must be one of {self.splits}, got {split!r}")
        self.root = Path(root)
        self.split = split
        img_dir, lbl_dir = self.root / split, self.root / f"{split}annot"
        self._require_dirs("CamVid", self.root, img_dir, lbl_dir)
        images = {p.name: p for p in img_dir.glob("*.png")}
        labels = {p.name: p for p in lbl_dir.glob("*.png")}
        self._set_samples(_pair_by_key(images, labels, f"CamVid {split}"), self.LAYOUT)

    def map_label(self, label: np.ndarray) -> np.ndarray:
        lab = label.astype(np.int64)
        lab[lab == self.VOID] = self.ignore_index
        return lab


# ======================================================================================
# Cityscapes
# ======================================================================================
# labelId -> trainId for the 35 Cityscapes labels (ids 0..33 plus license plate = -1).
# Hard-coded as a fallback because the official `cityscapesscripts` package may not be
# installed; when it is importable, the table is built from cityscapesscripts.helpers.labels.
# trainId 255 (and -1) means ignore.
CITYSCAPES_LABELID_TO_TRAINID: dict[int, int] = {
    0: 255,  # unlabeled
    1: 255,  # ego vehicle
    2: 255,  # rectification border
    3: 255,  # out of roi
    4: 255,  # static
    5: 255,  # dynamic
    6: 255,  # ground
    7: 0,  # road
    8: 1,  # sidewalk
    9: 255,  # parking
    10: 255,  # rail track
    11: 2,  # building
    12: 3,  # wall
    13: 4,  # fence
    14: 255,  # guard rail
    15: 255,  # bridge
    16: 255,  # tunnel
    17: 5,  # pole
    18: 255,  # polegroup
    19: 6,  # traffic light
    20: 7,  # traffic sign
    21: 8,  # vegetation
    22: 9,  # terrain
    23: 10,  # sky
    24: 11,  # person
    25: 12,  # rider
    26: 13,  # car
    27: 14,  # truck
    28: 15,  # bus
    29: 255,  # caravan
    30: 255,  # trailer
    31: 16,  # train
    32: 17,  # motorcycle
    33: 18,  # bicycle
    -1: 255,  # license plate
}


def _cityscapes_table() -> dict[int, int]:
    try:
        from cityscapesscripts.helpers.labels import labels as cs_labels
    except Exception:
        return dict(CITYSCAPES_LABELID_TO_TRAINID)
    return {
        int(lab.id): (IGNORE_INDEX if lab.trainId in (-1, 255) else int(lab.trainId))
        for lab in cs_labels
    }


class Cityscapes(SegmentationDataset):
    """Cityscapes (fine annotations), official layout; labelIds mapped to the 19 trainIds."""

    classes = (
        "road",
        "sidewalk",
        "building",
        "wall",
        "fence",
        "pole",
        "traffic light",
        "traffic sign",
        "vegetation",
        "terrain",
        "sky",
        "person",
        "rider",
        "car",
        "truck",
        "bus",
        "train",
        "motorcycle",
        "bicycle",
    )
    splits = ("train", "val", "test")
    LAYOUT = (
        "  <root>/leftImg8bit/{split}/{city}/*_leftImg8bit.png\n"
        "  <root>/gtFine/{split}/{city}/*_gtFine_labelIds.png\n"
        "(split in train, val, test)"
    )
    IMG_SUFFIX = "_leftImg8bit.png"
    LBL_SUFFIX = "_gtFine_labelIds.png"

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        transform: Transform | None = None,
        skip_bad: bool = False,
    ):
        super().__init__(transform, skip_bad)
        if split not in self.splits:
            raise ValueError(f"Cityscapes split must be one of {self.splits}, got {split!r}")
        self.root = Path(root)
        self.split = split
        img_dir = self.root / "leftImg8bit" / split
        lbl_dir = self.root / "gtFine" / split
        self._require_dirs("Cityscapes", self.root, img_dir, lbl_dir)
        images = {
            f"{p.parent.name}/{p.name[: -len(self.IMG_SUFFIX)]}": p
            for p in img_dir.glob(f"*/*{self.IMG_SUFFIX}")
        }
        labels = {
            f"{p.parent.name}/{p.name[: -len(self.LBL_SUFFIX)]}": p
            for p in lbl_dir.glob(f"*/*{self.LBL_SUFFIX}")
        }
        self._set_samples(_pair_by_key(images, labels, f"Cityscapes {split}"), self.LAYOUT)
        # Lookup table over all 8-bit labelIds; unknown ids -> -1 (flagged as invalid).
        lut = np.full(256, -1, dtype=np.int64)
        for label_id, train_id in _cityscapes_table().items():
            if 0 <= label_id < 256:
                lut[label_id] = train_id
        self._lut = lut

    def map_label(self, label: np.ndarray) -> np.ndarray:
        if label.min() < 0 or label.max() > 255:
            out = np.full(label.shape, -1, dtype=np.int64)
            ok = (label >= 0) & (label <= 255)
            out[ok] = self._lut[label[ok]]
            return out
        return self._lut[label]


# ======================================================================================
# Mapillary Vistas v1.2
# ======================================================================================
class MapillaryVistas(SegmentationDataset):
    """Mapillary Vistas v1.2: 65 classes (label ids 0..64; 65 = unlabeled -> 255).

    Images and labels are resized to ``size = (H, W)`` on load (image bilinear, label
    nearest); ``size=None`` keeps the original resolution.
    """

    classes = (
        "Bird",
        "Ground Animal",
        "Curb",
        "Fence",
        "Guard Rail",
        "Barrier",
        "Wall",
        "Bike Lane",
        "Crosswalk - Plain",
        "Curb Cut",
        "Parking",
        "Pedestrian Area",
        "Rail Track",
        "Road",
        "Service Lane",
        "Sidewalk",
        "Bridge",
        "Building",
        "Tunnel",
        "Person",
        "Bicyclist",
        "Motorcyclist",
        "Other Rider",
        "Lane Marking - Crosswalk",
        "Lane Marking - General",
        "Mountain",
        "Sand",
        "Sky",
        "Snow",
        "Terrain",
        "Vegetation",
        "Water",
        "Banner",
        "Bench",
        "Bike Rack",
        "Billboard",
        "Catch Basin",
        "CCTV Camera",
        "Fire Hydrant",
        "Junction Box",
        "Mailbox",
        "Manhole",
        "Phone Booth",
        "Pothole",
        "Street Light",
        "Pole",
        "Traffic Sign Frame",
        "Utility Pole",
        "Traffic Light",
        "Traffic Sign (Back)",
        "Traffic Sign (Front)",
        "Trash Can",
        "Bicycle",
        "Boat",
        "Bus",
        "Car",
        "Caravan",
        "Motorcycle",
        "On Rails",
        "Other Vehicle",
        "Trailer",
        "Truck",
        "Wheeled Slow",
        "Car Mount",
        "Ego Vehicle",
    )
    UNLABELED = 65
    split_dirs = {
        "train": "training",
        "training": "training",
        "val": "validation",
        "validation": "validation",
    }
    LAYOUT = (
        "  <root>/training/images/*.jpg     <root>/training/v1.2/labels/*.png\n"
        "  <root>/validation/images/*.jpg   <root>/validation/v1.2/labels/*.png\n"
        "(labels: class ids 0..64, 65 = unlabeled)"
    )

    def __init__(
        self,
        root: str | Path,
        split: str = "train",
        size: tuple[int, int] | None = (1152, 1536),
        transform: Transform | None = None,
        skip_bad: bool = False,
    ):
        super().__init__(transform, skip_bad)
        if split not in self.split_dirs:
            raise ValueError(
                f"MapillaryVistas split must be one of {tuple(self.split_dirs)}, got {split!r}"
            )
        self.root = Path(root)
        self.split = split
        self.size = None if size is None else (int(size[0]), int(size[1]))
        base = self.root / self.split_dirs[split]
        img_dir, lbl_dir = base / "images", base / "v1.2" / "labels"
        self._require_dirs("MapillaryVistas", self.root, img_dir, lbl_dir)
        images = {p.stem: p for p in img_dir.glob("*.jpg")}
        labels = {p.stem: p for p in lbl_dir.glob("*.png")}
        self._set_samples(_pair_by_key(images, labels, f"MapillaryVistas {split}"), self.LAYOUT)

    def map_label(self, label: np.ndarray) -> np.ndarray:
        lab = label.astype(np.int64)
        lab[lab == self.UNLABELED] = self.ignore_index
        return lab

    def resize(self, image: torch.Tensor, label: torch.Tensor):
        if self.size is None or tuple(image.shape[1:]) == self.size:
            return image, label
        image = F.interpolate(
            image[None], size=self.size, mode="bilinear", align_corners=False, antialias=True
        )[0].clamp_(0.0, 1.0)
        label = F.interpolate(label[None, None].float(), size=self.size, mode="nearest")[0, 0]
        return image, label.long()

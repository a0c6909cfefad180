"""Dataset folders on disk: find the (image, label) pairs of a split and read them in the model's numbering.

numpy + pillow only. Conventions (docs/design.md, "Dataset conventions"; class lists in ``train/data/classes/``):

| dataset    | data.root: the folder, or its parent holding   | a split's images and labels                           |
|------------|------------------------------------------------|-------------------------------------------------------|
| ade20k     | ADEChallengeData2016                           | images/{training,validation}/*.jpg,                   |
|            |                                                | annotations/{training,validation}/*.png               |
| coco-stuff | cocostuff, coco_stuff, coco-stuff or coco      | images/{train2017,val2017}/*.jpg,                     |
|            |                                                | annotations/{train2017,val2017}/*.png                 |
| cityscapes | cityscapes                                     | leftImg8bit/{train,val}/CITY/*_leftImg8bit.png,       |
|            |                                                | gtFine/{train,val}/CITY/*_gtFine_labelIds.png         |
| folder     | (the folder itself)                            | images/*.{jpg,jpeg,png} + labels/*.png (same stem),   |
|            |                                                | classes.txt or classes.json; val: val/{images,labels} |

A folder dataset without ROOT/val validates on its training pairs (with a warning).

Ids: ADE20K keeps file value 0 ("other") as class 0 (151 classes, ignore id 0). COCO-Stuff keeps 0..181 and maps
255 (unlabeled) to class 182, the ignore id (183 classes). Cityscapes keeps labelIds 0..33 (0 = unlabeled, the
ignore id) and adds 34 = license plate, which the official tools never draw into labelIds files (35 classes).

Every problem is reported when the dataset is built, in one paragraph that names the expected layout: a missing
folder, a split without images, an image without its label (or a label without its image). A label value that
is no class id fails when that file is read, naming the file and the value. Nothing is skipped silently.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dpsims.errors import DataError
from train.data.catalog import ClassList, load_builtin, read_classes_file

SPLITS = ("train", "val")
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class Source:
    """The pairs of one split of one dataset folder, and how to read them."""

    name: str
    root: Path
    split: str
    classes: ClassList
    pairs: list[tuple[Path, Path]]
    _lut: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._lut = self.classes.lut()

    def __len__(self) -> int:
        return len(self.pairs)

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(image uint8 [H, W, 3], label int64 [H, W] in model ids) of pair ``index``, at the files' size."""
        image_path, label_path = self.pairs[index]
        image = read_image(image_path)
        label = map_label(read_raw_label(label_path), self._lut, label_path, self.classes)
        if image.shape[:2] != label.shape:
            raise DataError(
                f"{image_path} is {image.shape[1]}x{image.shape[0]} but its label {label_path} is "
                f"{label.shape[1]}x{label.shape[0]} (width x height); an image and its label must have the same size."
            )
        return image, label


# ----------------------------------------------------------------------------------------------- reading


def read_image(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except OSError as e:
        raise DataError(f"Cannot read image {path}: {e}") from None


def read_raw_label(path: Path) -> np.ndarray:
    """The values stored in a single-channel label PNG (mode L, P, I;16 or I), as int64."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P", "I", "I;16", "I;16B", "1"):
                raise DataError(
                    f"Label {path} is a {im.mode} image; labels must be single-channel PNGs whose pixel values are "
                    "class ids (mode L, P or I). Convert colour-coded labels to ids first."
                )
            return np.asarray(im).astype(np.int64)
    except OSError as e:
        raise DataError(f"Cannot read label {path}: {e}") from None


def map_label(raw: np.ndarray, lut: np.ndarray, path: Path, classes: ClassList) -> np.ndarray:
    """File values -> model ids through ``lut``; values that name no class are an error naming the file."""
    inside = (raw >= 0) & (raw < len(lut))
    mapped = np.where(inside, lut[np.clip(raw, 0, len(lut) - 1)], -1)
    if (mapped < 0).any():
        bad = np.unique(raw[mapped < 0])
        shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
        valid = classes.raw_values
        raise DataError(
            f"Label {path} holds value(s) {shown} that are not class ids: the {len(classes)} classes use the values "
            f"{_ranges(valid)}. Check that the labels belong to this dataset (and its classes file)."
        )
    return mapped


def _ranges(values: list[int]) -> str:
    """[0, 1, 2, 3, 255] -> '0..3, 255'."""
    out, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            out.append(f"{start}..{v}" if v > start else str(v))
            start = None
    return ", ".join(out)


# ---------------------------------------------------------------------------------------------- layouts


def open_source(dataset: str, root: str | Path | None, split: str, classes_file: str | Path | None = None) -> Source:
    """Find the pairs of ``split`` ('train' or 'val') of a dataset folder; raise :class:`DataError` if incomplete."""
    if split not in SPLITS:
        raise DataError(f"Unknown split {split!r}; use one of {', '.join(SPLITS)}.")
    if root is None:
        raise DataError(f"Dataset '{dataset}' needs a root folder: set data.root=/path/to/{dataset}.")
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"The {dataset} root {root} is not a folder.")
    if dataset in _IMAGES_ANNOTATIONS:
        return _images_annotations(dataset, root, split)
    if dataset == "cityscapes":
        return _cityscapes(root, split)
    if dataset == "folder":
        return _folder(root, split, classes_file)
    raise DataError(f"Unknown dataset {dataset!r}; known: {', '.join([*_IMAGES_ANNOTATIONS, 'cityscapes', 'folder'])}.")


def _locate(root: Path, parents_of: tuple[str, ...], marker: str, layout: str) -> Path:
    """``root`` if it holds the folder ``marker``, else its child named in ``parents_of`` that does."""
    candidates = [root, *(root / name for name in parents_of)]
    for cand in candidates:
        if (cand / marker).is_dir():
            return cand
    raise DataError(f"Found no '{marker}' folder in {' or '.join(str(c) for c in candidates)}. {layout}")


def _files(folder: Path, endings: tuple[str, ...], layout: str, recursive: bool = False) -> list[Path]:
    """Files under ``folder`` whose name ends with one of ``endings`` (case-insensitive), sorted."""
    if not folder.is_dir():
        raise DataError(f"Missing folder {folder}. {layout}")
    candidates = folder.rglob("*") if recursive else folder.iterdir()
    lowered = tuple(e.lower() for e in endings)
    found = sorted(p for p in candidates if p.name.lower().endswith(lowered) and p.is_file())
    if not found:
        raise DataError(f"Found no {' or '.join('*' + e for e in endings)} under {folder}. {layout}")
    return found


def _pair(images: list[Path], labels: list[Path], key_image, key_label, expected_label, layout: str) -> list[tuple[Path, Path]]:
    """Match images and labels by key; every image needs its label and every label its image."""
    label_of, image_of = _by_key(labels, key_label, "labels", layout), _by_key(images, key_image, "images", layout)
    missing = [image_of[k] for k in image_of if k not in label_of]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) have no label, e.g. image {missing[0]} has no label {expected_label(missing[0])}. "
            f"Every image needs its label. {layout}"
        )
    orphans = [label_of[k] for k in label_of if k not in image_of]
    if orphans:
        raise DataError(f"{len(orphans)} label(s) have no image, e.g. {orphans[0]}. Every label needs its image. {layout}")
    return [(image_of[k], label_of[k]) for k in image_of]


def _by_key(paths: list[Path], key, what: str, layout: str) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for p in paths:
        k = key(p)
        if k in out:
            raise DataError(f"Two {what} share the name {k!r}: {out[k]} and {p}; keep one. {layout}")
        out[k] = p
    return out


# images/SPLIT/*.jpg + annotations/SPLIT/*.png: (folder names data.root may be the parent of, split folders, layout)
_IMAGES_ANNOTATIONS = {
    "ade20k": (
        ("ADEChallengeData2016",),
        {"train": "training", "val": "validation"},
        "Expected the ADE20K SceneParsing layout ADEChallengeData2016/images/{training,validation}/*.jpg with "
        "ADEChallengeData2016/annotations/{training,validation}/*.png of the same name; data.root may be the "
        "ADEChallengeData2016 folder or its parent.",
    ),
    "coco-stuff": (
        ("cocostuff", "coco_stuff", "coco-stuff", "coco"),
        {"train": "train2017", "val": "val2017"},
        "Expected the COCO-Stuff layout images/{train2017,val2017}/*.jpg with annotations/{train2017,val2017}/*.png "
        "of the same name (the stuffthingmaps_trainval2017 PNGs); data.root may be that folder or its parent "
        "(cocostuff, coco_stuff, coco-stuff or coco).",
    ),
}


def _images_annotations(dataset: str, root: Path, split: str) -> Source:
    parents, split_dirs, layout = _IMAGES_ANNOTATIONS[dataset]
    base = _locate(root, parents, "images", layout)
    image_dir, label_dir = base / "images" / split_dirs[split], base / "annotations" / split_dirs[split]
    images, labels = _files(image_dir, (".jpg",), layout), _files(label_dir, (".png",), layout)
    pairs = _pair(images, labels, _stem, _stem, lambda p: label_dir / f"{p.stem}.png", layout)
    return Source(dataset, base, split, load_builtin(dataset), pairs)


def _stem(p: Path) -> str:
    return p.stem


def _cityscapes(root: Path, split: str) -> Source:
    layout = (
        "Expected the Cityscapes layout leftImg8bit/{train,val}/CITY/*_leftImg8bit.png with "
        "gtFine/{train,val}/CITY/*_gtFine_labelIds.png (from gtFine_trainvaltest.zip); data.root may be that "
        "folder or its parent (cityscapes)."
    )
    base = _locate(root, ("cityscapes", "Cityscapes"), "leftImg8bit", layout)
    image_dir, label_dir = base / "leftImg8bit" / split, base / "gtFine" / split
    images = _files(image_dir, ("_leftImg8bit.png",), layout, recursive=True)
    labels = _files(label_dir, ("_gtFine_labelIds.png",), layout, recursive=True)

    def key_image(p: Path) -> str:
        return f"{p.parent.name}/{p.name[: -len('_leftImg8bit.png')]}"

    def key_label(p: Path) -> str:
        return f"{p.parent.name}/{p.name[: -len('_gtFine_labelIds.png')]}"

    def expected(p: Path) -> Path:
        return label_dir / p.parent.name / f"{p.name[: -len('_leftImg8bit.png')]}_gtFine_labelIds.png"

    pairs = _pair(images, labels, key_image, key_label, expected, layout)
    return Source("cityscapes", base, split, load_builtin("cityscapes"), pairs)


def _folder(root: Path, split: str, classes_file: str | Path | None) -> Source:
    layout = (
        f"Expected a folder dataset: ROOT/images/*.jpg|*.png with ROOT/labels/*.png of the same stem (single-channel "
        f"class ids) and ROOT/classes.txt (one class name per line, optionally 'name R G B'; 'ignore_id: N') or "
        f"ROOT/classes.json; optionally ROOT/val/images + ROOT/val/labels for the val split. ROOT is {root}."
    )
    if classes_file is not None:
        cfile = Path(classes_file).expanduser()
        if not cfile.is_file():
            raise DataError(f"The classes file {cfile} (data.classes_file) does not exist. {layout}")
    else:
        found = [root / n for n in ("classes.txt", "classes.json") if (root / n).is_file()]
        if not found:
            raise DataError(f"Found no classes.txt or classes.json in {root}. {layout}")
        cfile = found[0]
    classes = read_classes_file(cfile)
    base = root
    if split == "val":
        if (root / "val").is_dir():
            base = root / "val"
        else:
            warnings.warn(f"{root} has no val/ folder: the val split reads the training images.", stacklevel=3)
    image_dir, label_dir = base / "images", base / "labels"
    images = _files(image_dir, _IMAGE_SUFFIXES, layout)
    labels = _files(label_dir, (".png",), layout)
    pairs = _pair(images, labels, _stem, _stem, lambda p: label_dir / f"{p.stem}.png", layout)
    return Source("folder", root, split, classes, pairs)

"""Segmentation metrics and label consistency (numpy only at import; torch tensors are accepted, not required).

- :func:`confusion_matrix`: rows are target classes, columns predicted classes; ignored pixels dropped.
- :func:`miou`: mean IoU over the classes that occur in the target or the prediction (after dropping ignored
  pixels), the ignore class itself excluded. A class that occurs in neither has an undefined IoU and is left
  out, so a map with 3 classes out of 150 is not diluted by 147 empty ones. Over a batch the confusion matrix
  is pooled over all pixels of all maps (the dataset-level mIoU of segmentation benchmarks).
- :func:`label_consistency`: how well generated images respect their label maps, measured by the fixed
  classifier of the synthetic dataset (:meth:`SyntheticScenes.classify`); 1.0 for the dataset's own images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from dpsims.errors import InputError

if TYPE_CHECKING:
    from train.data.synthetic import SyntheticScenes


def _numpy(x: Any) -> np.ndarray:
    """numpy view of a numpy array or a torch tensor (any device), without importing torch."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def confusion_matrix(pred: Any, target: Any, num_classes: int, ignore_id: int | None = None) -> np.ndarray:
    """int64 [C, C] counts: entry (t, p) is the number of pixels of target class t predicted as p.

    ``pred`` and ``target`` are integer arrays of the same shape (any number of maps). Pixels whose target is
    ``ignore_id`` are dropped. Ids outside 0..C-1 are an error."""
    pred, target = _numpy(pred), _numpy(target)
    if pred.shape != target.shape:
        raise InputError(f"pred and target shapes differ: {pred.shape} vs {target.shape}.")
    for name, a in (("pred", pred), ("target", target)):
        if not np.issubdtype(a.dtype, np.integer):
            raise InputError(f"{name} must hold integer class ids, got {a.dtype}.")
    pred, target = pred.ravel().astype(np.int64), target.ravel().astype(np.int64)
    if ignore_id is not None:
        keep = target != ignore_id
        pred, target = pred[keep], target[keep]
    for name, a in (("pred", pred), ("target", target)):
        if a.size and (a.min() < 0 or a.max() >= num_classes):
            raise InputError(f"{name} ids {a.min()}..{a.max()} are outside 0..{num_classes - 1}.")
    counts = np.bincount(target * num_classes + pred, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def iou_per_class(cm: np.ndarray) -> np.ndarray:
    """float64 [C]: IoU of each class from a confusion matrix; NaN where the class occurs nowhere."""
    cm = np.asarray(cm, dtype=np.float64)
    inter = np.diag(cm)
    union = cm.sum(0) + cm.sum(1) - inter
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, inter / union, np.nan)


def miou(pred: Any, target: Any, num_classes: int, ignore_id: int | None = None) -> float:
    """Mean IoU over classes present in target or prediction (module docstring); NaN if no pixel counts."""
    return miou_of_confusion(confusion_matrix(pred, target, num_classes, ignore_id), ignore_id)


def miou_of_confusion(cm: np.ndarray, ignore_id: int | None = None) -> float:
    """:func:`miou` of a confusion matrix, e.g. one summed over chunks of a large set (the same pooled value)."""
    num_classes = len(cm)
    iou = iou_per_class(cm)
    if ignore_id is not None and 0 <= ignore_id < num_classes:
        iou[ignore_id] = np.nan
    valid = iou[~np.isnan(iou)]
    return float(valid.mean()) if valid.size else float("nan")


def to_uint8_nhwc(images: Any) -> np.ndarray:
    """Generator output float [-1, 1], [N, 3, H, W] or [3, H, W] (numpy or torch) -> uint8 [N, H, W, 3] / [H, W, 3].

    Values outside [-1, 1] are clipped; -1 maps to 0 and 1 to 255, rounding to the nearest level."""
    from runtimes.imaging import to_uint8  # the predictor's own conversion, without importing the predictor

    x = _numpy(images)
    if x.ndim not in (3, 4) or x.shape[-3] != 3:
        raise InputError(f"images must be [N, 3, H, W] or [3, H, W], got shape {x.shape}.")
    return to_uint8(x.astype(np.float32))


def label_consistency(images: Any, labels: Any, scenes: SyntheticScenes) -> float:
    """mIoU between ``scenes.classify(images)`` and ``labels``, pooled over the batch.

    ``images``: uint8 [N, H, W, 3] (or one [H, W, 3]); a float [N, 3, H, W] generator output in [-1, 1] is
    converted with :func:`to_uint8_nhwc`. ``labels``: int [N, H, W] (or [H, W]), numpy or torch."""
    return miou_of_confusion(label_consistency_confusion(images, labels, scenes))


def label_consistency_confusion(images: Any, labels: Any, scenes: SyntheticScenes) -> np.ndarray:
    """The confusion matrix behind :func:`label_consistency` (same arguments): summed over the chunks of a large
    set, :func:`miou_of_confusion` of the sum is the label consistency of the whole set."""
    images = _numpy(images)
    if images.dtype != np.uint8:
        images = to_uint8_nhwc(images)
    labels = _numpy(labels)
    pred = scenes.classify(images)
    if pred.shape != labels.shape:
        raise InputError(f"images give label maps of shape {pred.shape}, labels have shape {labels.shape}.")
    return confusion_matrix(pred, labels, scenes.num_classes)

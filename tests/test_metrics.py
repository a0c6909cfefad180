"""Segmentation metrics, the uint8 conversion, and label consistency with the synthetic classifier."""

from __future__ import annotations

import time

import numpy as np
import pytest

from train.data.synthetic import SyntheticScenes
from train.metrics import confusion_matrix, iou_per_class, label_consistency, miou, to_uint8_nhwc

# ------------------------------------------------------------------------------------ confusion / mIoU


def test_confusion_matrix_and_miou_hand_computed():
    target = np.array([[0, 0, 1, 1], [2, 2, 2, 1]])
    pred = np.array([[0, 1, 1, 1], [2, 2, 0, 1]])
    cm = confusion_matrix(pred, target, 4)
    expected = np.zeros((4, 4), np.int64)
    expected[0, 0], expected[0, 1] = 1, 1  # class 0: one right, one taken for 1
    expected[1, 1] = 3
    expected[2, 2], expected[2, 0] = 2, 1
    np.testing.assert_array_equal(cm, expected)
    # IoU: class 0 = 1 / (2 + 2 - 1) = 1/3; class 1 = 3 / (3 + 4 - 3) = 3/4; class 2 = 2 / (3 + 2 - 2) = 2/3;
    # class 3 occurs nowhere and is left out of the mean
    np.testing.assert_allclose(iou_per_class(cm)[:3], [1 / 3, 3 / 4, 2 / 3])
    assert np.isnan(iou_per_class(cm)[3])
    assert miou(pred, target, 4) == pytest.approx((1 / 3 + 3 / 4 + 2 / 3) / 3)


def test_miou_ignore_id_drops_pixels_and_class():
    target = np.array([0, 0, 1, 1, 9, 9])
    pred = np.array([0, 1, 1, 1, 0, 1])
    # the two target-9 pixels are dropped entirely: class 0 = 1/2, class 1 = 2/3
    assert miou(pred, target, 10, ignore_id=9) == pytest.approx((1 / 2 + 2 / 3) / 2)
    # predicting the ignore class on a valid pixel is an error of that pixel's class, the ignore class is not averaged
    assert miou(np.array([0, 9]), np.array([0, 0]), 10, ignore_id=9) == pytest.approx(1 / 2)
    assert np.isnan(miou(np.array([3]), np.array([9]), 10, ignore_id=9))


def test_miou_matches_reference_set_computation(rng):
    k = 6
    target = rng.integers(0, k, (5, 17, 23))
    pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, k, target.shape))
    reference = []
    for c in range(k):
        inter = np.logical_and(pred == c, target == c).sum()
        union = np.logical_or(pred == c, target == c).sum()
        if union:
            reference.append(inter / union)
    assert miou(pred, target, k) == pytest.approx(np.mean(reference))


def test_perfect_and_disjoint_predictions():
    target = np.arange(12).reshape(3, 4) % 3
    assert miou(target, target, 3) == 1.0
    assert miou((target + 1) % 3, target, 3) == 0.0


def test_metric_input_errors():
    with pytest.raises(ValueError, match="shapes differ"):
        confusion_matrix(np.zeros((2, 2), int), np.zeros((2, 3), int), 2)
    with pytest.raises(ValueError, match="outside 0..1"):
        confusion_matrix(np.array([0, 2]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="integer"):
        confusion_matrix(np.zeros(3), np.zeros(3, int), 2)


def test_torch_tensors_are_accepted():
    torch = pytest.importorskip("torch")
    t = torch.tensor([[0, 1], [1, 1]])
    assert miou(t, t.numpy(), 2) == 1.0


# ------------------------------------------------------------------------------------- uint8 conversion


def test_to_uint8_nhwc_values_and_layout():
    x = np.zeros((2, 3, 4, 5), np.float32)
    x[0, 0] = -1.0  # red channel of image 0 -> 0
    x[0, 1] = 1.0  # green -> 255
    x[0, 2] = 2.0  # clipped -> 255
    x[1, :, 1, 2] = [-0.5, 0.0, 0.5]  # 63.75 -> 64, 127.5 -> 128, 191.25 -> 191
    out = to_uint8_nhwc(x)
    assert out.shape == (2, 4, 5, 3) and out.dtype == np.uint8
    assert (out[0, ..., 0] == 0).all() and (out[0, ..., 1] == 255).all() and (out[0, ..., 2] == 255).all()
    np.testing.assert_array_equal(out[1, 1, 2], [64, 128, 191])
    assert to_uint8_nhwc(x[1]).shape == (4, 5, 3)
    with pytest.raises(ValueError, match=r"\[N, 3, H, W\]"):
        to_uint8_nhwc(np.zeros((2, 4, 5, 3)))


def test_to_uint8_roundtrip_of_dataset_normalisation(scenes):
    image, _ = scenes.render(0)
    as_float = image.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0  # what the datasets feed the networks
    np.testing.assert_array_equal(to_uint8_nhwc(as_float), image)


# ------------------------------------------------------------------------------------ label consistency


def test_classifier_scores_real_images_high(scenes, scene_batch):
    images, labels = scene_batch
    score = label_consistency(images, labels, scenes)
    assert score >= 0.95, score
    assert (scenes.classify(images) == labels).mean() > 0.98


def test_classifier_scores_32_classes_high():
    sc = SyntheticScenes(32, (64, 64), seed=3)
    pairs = [sc.render(i) for i in range(64)]
    images, labels = np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
    assert label_consistency(images, labels, sc) >= 0.95


def test_classifier_is_near_chance_on_noise(scenes, scene_batch, rng):
    _, labels = scene_batch
    noise = rng.integers(0, 256, labels.shape + (3,), dtype=np.uint8)
    chance = miou(rng.integers(0, scenes.num_classes, labels.shape), labels, scenes.num_classes)
    score = label_consistency(noise, labels, scenes)
    assert score < 0.1 and score < 1.5 * chance, (score, chance)


def test_classifier_rejects_images_painted_from_other_labels(scenes, scene_batch):
    images, labels = scene_batch
    wrong = np.stack([scenes.paint((lab + 1) % scenes.num_classes) for lab in labels])
    assert label_consistency(wrong, labels, scenes) < 0.05
    shuffled = np.roll(images, 1, axis=0)  # images of other layouts
    assert label_consistency(shuffled, labels, scenes) < 0.4


def test_classifier_tolerates_imperfect_images(scenes, scene_batch, rng):
    """A generator's images are not exact: noise, a colour cast and blur must cost little."""
    images, labels = scene_batch
    x = images.astype(np.float32) + rng.normal(0, 8, images.shape) + rng.uniform(-10, 10, (len(images), 1, 1, 3))
    x = (x + np.roll(x, 1, axis=2)) / 2  # a slight horizontal blur smears the texture
    degraded = np.clip(np.rint(x), 0, 255).astype(np.uint8)
    assert label_consistency(degraded, labels, scenes) > 0.9


def test_label_consistency_accepts_generator_output(scenes, scene_batch):
    torch = pytest.importorskip("torch")
    images, labels = scene_batch
    as_output = torch.from_numpy(images[:8]).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    expected = label_consistency(images[:8], labels[:8], scenes)
    assert label_consistency(as_output, torch.from_numpy(labels[:8]), scenes) == pytest.approx(expected)
    with pytest.raises(ValueError, match="shape"):
        label_consistency(images[:8], labels[:7], scenes)


def test_classifier_is_fast(scenes, scene_batch):
    images, _ = scene_batch
    scenes.classify(images[:2])
    start = time.perf_counter()
    scenes.classify(images)
    assert time.perf_counter() - start < 2.0  # about 0.1 s on 2 shared cores; catches order-of-magnitude slips

"""Each loss on hand-made tensors against values worked out by hand."""

import math

import pytest
import torch

from train import losses


def test_class_balance_weights_by_hand():
    label = torch.tensor([[[0, 0, 0, 1]]])
    w = losses.class_balance_weights(label, num_classes=3)
    # 4 pixels, 2 classes present: w0 = 4 / (2 * 3), w1 = 4 / (2 * 1); absent class 2 irrelevant
    assert torch.allclose(w, torch.tensor([[[2 / 3, 2 / 3, 2 / 3, 2.0]]]))
    assert w.mean().item() == pytest.approx(1.0)


def test_class_balance_weights_ignore():
    label = torch.tensor([[[0, 1, 2, 2]]])
    w = losses.class_balance_weights(label, num_classes=3, ignore_id=2)
    assert torch.allclose(w, torch.tensor([[[1.0, 1.0, 0.0, 0.0]]]))


def _two_pixel_case():
    # pixel A: class 0 -> target channel 1, logits [0, ln 2, 0] -> p_t = 1/2
    # pixel B: class 1 -> target channel 2, logits [0, 0, 0]    -> p_t = 1/3
    logits = torch.tensor([[0.0, 0.0], [math.log(2), 0.0], [0.0, 0.0]]).view(1, 3, 1, 2)
    label = torch.tensor([[[0, 1]]])
    return logits, label


@pytest.mark.parametrize("gamma", [0.0, 1.0, 2.0])
def test_focal_n1_real_by_hand(gamma):
    logits, label = _two_pixel_case()
    expected = ((0.5**gamma) * math.log(2) + ((2 / 3) ** gamma) * math.log(3)) / 2
    got = losses.focal_n1_loss(logits, label, target_real=True, gamma=gamma, class_balance=True)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_focal_n1_fake_by_hand():
    logits, label = _two_pixel_case()
    # target "fake" (channel 0): pixel A p0 = 1/4, pixel B p0 = 1/3; one pixel per class -> weights 1
    expected = (math.log(4) + math.log(3)) / 2
    got = losses.focal_n1_loss(logits, label, target_real=False, gamma=0.0, class_balance=True)
    assert got.item() == pytest.approx(expected, rel=1e-5)


def test_class_balance_changes_weighting():
    # three pixels of class 0 well classified, one pixel of class 1 badly: balance up-weights the rare pixel
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 1, 0, :3] = 5.0
    label = torch.tensor([[[0, 0, 0, 1]]])
    plain = losses.focal_n1_loss(logits, label, True, gamma=0.0, class_balance=False)
    balanced = losses.focal_n1_loss(logits, label, True, gamma=0.0, class_balance=True)
    logp = torch.log_softmax(logits, 1)
    ce = -torch.stack([logp[0, 1, 0, 0], logp[0, 1, 0, 1], logp[0, 1, 0, 2], logp[0, 2, 0, 3]])
    assert plain.item() == pytest.approx(ce.mean().item(), rel=1e-5)
    assert balanced.item() == pytest.approx(((2 / 3) * ce[:3].sum() + 2 * ce[3]).item() / 4, rel=1e-5)


def test_labelmix_loss_by_hand():
    real = torch.full((1, 2, 2, 2), 1.0)
    fake = torch.full((1, 2, 2, 2), -1.0)
    mask = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]])
    mixed = torch.zeros(1, 2, 2, 2)
    # target = +1 where mask 1, -1 where mask 0 -> squared error 1 everywhere
    assert losses.labelmix_loss(mixed, real, fake, mask).item() == pytest.approx(1.0)
    assert losses.labelmix_loss(mask * real + (1 - mask) * fake, real, fake, mask).item() == pytest.approx(0.0)


def test_labelmix_mask_follows_classes():
    label = torch.tensor([[[0, 0, 1, 1], [2, 2, 1, 0]]])
    mask = losses.labelmix_mask(label, torch.Generator().manual_seed(0))
    assert mask.shape == (1, 1, 2, 4)
    for c in range(3):
        vals = mask[0, 0][label[0] == c]
        assert (vals == vals[0]).all()  # one decision per class


def test_patch_contrastive_by_hand():
    # two locations with orthogonal unit features: sim = I / T, loss = log(1 + exp(-1/T))
    feat = torch.tensor([[1.0, 0.0], [0.0, 1.0]]).view(1, 2, 1, 2)
    t = 0.5
    got = losses.patch_contrastive_loss(feat, feat, num_patches=2, temperature=t, generator=torch.Generator().manual_seed(0))
    assert got.item() == pytest.approx(math.log(1 + math.exp(-1 / t)), rel=1e-5)
    swapped = feat.flip(-1)  # positives now orthogonal, negatives aligned
    worse = losses.patch_contrastive_loss(swapped, feat, num_patches=2, temperature=t, generator=torch.Generator().manual_seed(0))
    assert worse.item() == pytest.approx(math.log(1 + math.exp(1 / t)), rel=1e-5)


def test_diversity_loss_by_hand():
    """Image distance in [0, 1] units (images in [-1, 1]: a gap of 0.2 is 0.1), noise distance in units of
    E|z1 - z2| = 2 / sqrt(pi) (a gap of 1 is 0.886 of the typical one), so ratio = 0.1 * sqrt(pi) / 2."""
    a = torch.zeros(2, 3, 4, 4)
    b = torch.full((2, 3, 4, 4), 0.2)
    za, zb = torch.zeros(2, 5), torch.ones(2, 5)
    ratio = 0.1 / (1.0 / (2 / math.sqrt(math.pi)))
    assert losses.diversity_ratio(a, b, za, zb).tolist() == pytest.approx([ratio, ratio])
    assert losses.diversity_loss(a, b, za, zb, tau=1.0).item() == pytest.approx(-ratio)
    assert losses.diversity_loss(a, b, za, zb, tau=0.05).item() == pytest.approx(-0.05)
    assert losses.diversity_loss(a, a, za, zb).item() == pytest.approx(0.0)


def test_diversity_cap_binds_at_the_scale_generators_reach():
    """Two typical noise draws and images 0.12 apart in [0, 1] units: the default cap (0.1) binds; 0.05 apart
    it does not. (The old ratio, raw |image| / raw |noise|, was about 0.1 / 1.13 and never reached its cap.)"""
    g = torch.Generator().manual_seed(0)
    za, zb = torch.randn(64, 16, 64, generator=g), torch.randn(64, 16, 64, generator=g)
    base = torch.rand(64, 3, 8, 8, generator=g) * 2 - 1
    far, near = base + 0.24, base + 0.10  # [-1, 1] units
    assert losses.diversity_ratio(base, far, za, zb).mean().item() == pytest.approx(0.12, rel=0.02)
    assert losses.diversity_loss(base, far, za, zb).item() == pytest.approx(-0.1)
    assert losses.diversity_loss(base, near, za, zb).item() == pytest.approx(-0.05, rel=0.02)


def test_fake_term_is_a_plain_mean_as_in_oasis():
    """Class balance weights the real-target terms only: with one class covering 3 pixels and another 1, the
    fake term is still the plain mean of -log p(fake), whatever class_balance says."""
    logits = torch.zeros(1, 3, 1, 4)
    logits[0, 0, 0, 3] = 2.0
    label = torch.tensor([[[0, 0, 0, 1]]])
    plain = -torch.log_softmax(logits, 1)[0, 0, 0].mean()
    for balance in (True, False):
        got = losses.focal_n1_loss(logits, label, target_real=False, gamma=0.0, class_balance=balance)
        assert got.item() == pytest.approx(plain.item(), rel=1e-6)
    assert losses.focal_n1_loss(logits, label, True, gamma=0.0, class_balance=True).item() != pytest.approx(
        losses.focal_n1_loss(logits, label, True, gamma=0.0, class_balance=False).item())

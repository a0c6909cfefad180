"""DP-SIMS losses as pure functions of tensors (no modules, no state).

Channel layout of discriminator logits: 0 = "fake", c + 1 = semantic class c (OASIS' N+1 classes).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def class_balance_weights(label: torch.Tensor, num_classes: int, ignore_id: int | None = None) -> torch.Tensor:
    """Per-pixel weights that give every class present in the batch the same total weight.

    w_c = P / (K * n_c) for the K classes present (n_c pixels of class c, P pixels counted), so the weights average
    to 1 over the counted pixels; ignored pixels get 0.
    """
    valid = torch.ones_like(label, dtype=torch.bool) if ignore_id is None else label != ignore_id
    ids = label.clamp(0, num_classes - 1)
    counts = torch.bincount(ids[valid].flatten(), minlength=num_classes).float()
    present = (counts > 0).sum().clamp(min=1)
    per_class = torch.where(counts > 0, valid.sum().float() / (present * counts.clamp(min=1)), torch.zeros_like(counts))
    return per_class[ids] * valid.float()


def focal_n1_loss(
    logits: torch.Tensor,
    label: torch.Tensor,
    target_real: bool,
    gamma: float = 2.0,
    class_balance: bool = True,
    ignore_id: int | None = None,
) -> torch.Tensor:
    """Pixel-wise (N+1)-class loss with focal modulation and class balancing.

    ``target_real=True``: every pixel should be classified as its semantic class (``label + 1``): the
    discriminator's loss on real images and the generator's adversarial loss. ``target_real=False``: every pixel
    should be "fake" (0): the discriminator's loss on generated images. Per pixel:
    ``w * (1 - p_t) ** gamma * -log p_t``, averaged over the pixels; gamma = 0 gives OASIS' loss. As in OASIS, the
    class-balance weights ``w`` (from the semantic label) apply where the target is a semantic class; the "fake"
    target is one class for every pixel, so its term is a plain mean over the (not ignored) pixels.
    """
    n_cls = logits.shape[1] - 1
    target = (label.clamp(0, n_cls - 1) + 1) if target_real else torch.zeros_like(label)
    logp = F.log_softmax(logits.float(), dim=1)
    logp_t = logp.gather(1, target.unsqueeze(1)).squeeze(1)
    loss = -logp_t
    if gamma > 0:
        loss = loss * (1 - logp_t.exp()).clamp(min=0).pow(gamma)
    if class_balance and target_real:
        loss = loss * class_balance_weights(label, n_cls, ignore_id)
    elif ignore_id is not None:
        loss = loss * (label != ignore_id).float()
    return loss.mean()


def labelmix_mask(label: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """A binary [N, 1, H, W] mask that takes, per image, a random half of the classes from the real image."""
    n_ids = int(label.max().item()) + 1
    pick = torch.randint(0, 2, (label.shape[0], n_ids), generator=generator, device="cpu").to(label.device)
    return pick.gather(1, label.flatten(1)).view(label.shape).unsqueeze(1).float()


def labelmix_loss(
    logits_mixed: torch.Tensor, logits_real: torch.Tensor, logits_fake: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """LabelMix consistency (OASIS): D's output on the mixed image should equal the same mix of its outputs on
    the real and fake images. Computed on the (N+1)-channel logits; mask is 1 where the mix is real."""
    target = mask * logits_real + (1 - mask) * logits_fake
    return F.mse_loss(logits_mixed.float(), target.float())


def patch_contrastive_loss(
    feat_fake: torch.Tensor,
    feat_real: torch.Tensor,
    num_patches: int = 64,
    temperature: float = 0.07,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Patch-level InfoNCE between generated and real images.

    At ``num_patches`` random locations, the generated feature vector must be closer (cosine) to the real feature
    at the same location than to the real features at the other sampled locations. Both maps [N, C, h, w];
    the real features are targets (no gradient).
    """
    n, c, h, w = feat_fake.shape
    k = min(num_patches, h * w)
    idx = torch.randperm(h * w, generator=generator, device="cpu")[:k].to(feat_fake.device)
    q = F.normalize(feat_fake.flatten(2)[:, :, idx].float(), dim=1)  # [N, C, K]
    p = F.normalize(feat_real.detach().flatten(2)[:, :, idx].float(), dim=1)
    sim = torch.bmm(q.transpose(1, 2), p) / temperature  # [N, K, K]; diagonal = positives
    target = torch.arange(k, device=sim.device).expand(n, k)
    return F.cross_entropy(sim.reshape(n * k, k), target.reshape(-1))


#: E|a - b| for independent standard normal a, b (a - b ~ N(0, 2)): the mean noise distance of two draws
NOISE_DISTANCE = 2.0 / math.sqrt(math.pi)


def diversity_ratio(img_a: torch.Tensor, img_b: torch.Tensor, noise_a: torch.Tensor, noise_b: torch.Tensor) -> torch.Tensor:
    """Per sample: the mean absolute image difference in units of the value range (images in [-1, 1], so /2: the
    same scale as ``pixel_diversity`` in evaluation), over the mean noise difference in units of its expected
    value for two independent draws (:data:`NOISE_DISTANCE`). Two typical draws give ratio = image distance."""
    d_img = (img_a - img_b).abs().flatten(1).mean(1) / 2.0
    d_noise = (noise_a - noise_b).abs().flatten(1).mean(1).clamp(min=1e-8) / NOISE_DISTANCE
    return d_img / d_noise


def diversity_loss(
    img_a: torch.Tensor, img_b: torch.Tensor, noise_a: torch.Tensor, noise_b: torch.Tensor, tau: float = 0.1
) -> torch.Tensor:
    """Diversity term that rewards different images for different noise (mode seeking, bounded):
    ``-mean(min(ratio, tau))`` with :func:`diversity_ratio`.

    ``tau`` is a mean per-pixel difference in [0, 1] units (0.1: images of one label map differ by a tenth of the
    value range for two typical noise draws); past it the term stops pushing images apart. Being bounded, it
    also does not explode while the noise has no effect yet, as the 1 / ratio form does at initialisation.
    """
    return capped_diversity(diversity_ratio(img_a, img_b, noise_a, noise_b), tau)


def capped_diversity(ratio: torch.Tensor, tau: float) -> torch.Tensor:
    """The diversity loss of per-sample :func:`diversity_ratio` values: ``-mean(min(ratio, tau))``."""
    return -ratio.clamp(max=tau).mean()


def discriminator_loss(
    logits_real: torch.Tensor, logits_fake: torch.Tensor, label: torch.Tensor, gamma: float, class_balance: bool, ignore_id: int | None = None
) -> torch.Tensor:
    return focal_n1_loss(logits_real, label, True, gamma, class_balance, ignore_id) + focal_n1_loss(
        logits_fake, label, False, gamma, class_balance, ignore_id
    )

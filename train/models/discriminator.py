"""The DP-SIMS discriminator: a pre-trained timm backbone as the encoder of a U-Net segmenter.

Every pixel is classified into the N semantic classes or "fake" (class 0 of the N+1 output, as in OASIS).
- Encoder: any timm model built with ``features_only=True``; its ``feature_info`` gives channels and strides.
  Inputs in [-1, 1] are normalised with the backbone's own pretrained mean/std. Frozen by default, and then kept
  in eval mode even when the discriminator is put in train mode (its BN/LN statistics never move).
- Feature conditioning: raw backbone features are ill-conditioned (scales differ by orders of magnitude between
  stages and channels), so each is standardised per position, projected by a 1x1 conv and gated by a sigmoid
  before the decoder sees it.
- Decoder: trainable, top-down with skip connections, down to full resolution; a small trainable stem on the
  image gives the full- and half-resolution skips the backbone (stride >= 4) does not have.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from train.config import DiscriminatorConfig
from train.errors import ConfigError

log = logging.getLogger(__name__)


class DiscriminatorOutput(NamedTuple):
    logits: torch.Tensor
    """[N, num_classes + 1, H, W]; channel 0 is "fake", channel c + 1 is semantic class c."""
    features: torch.Tensor
    """Decoder features at stride 4, used by the patch contrastive loss."""


class FeatureConditioning(nn.Module):
    """Standardise (per position, over channels), project, and gate with a sigmoid."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.norm = nn.GroupNorm(1, cin, affine=False)
        self.proj = nn.Conv2d(cin, 2 * cout, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(self.norm(f)).chunk(2, dim=1)
        return value * torch.sigmoid(gate)


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    groups = 8 if cout % 8 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.LeakyReLU(0.2),
        nn.Conv2d(cout, cout, 3, padding=1),
        nn.GroupNorm(groups, cout),
        nn.LeakyReLU(0.2),
    )


def build_backbone(cfg: DiscriminatorConfig) -> nn.Module:
    """timm backbone with ``features_only=True``; weights from a local file, the hub, or none (with a warning)."""
    import timm

    kwargs = {"features_only": True}
    if cfg.out_indices is not None:
        kwargs["out_indices"] = tuple(cfg.out_indices)
    if not timm.is_model(cfg.backbone):
        raise ConfigError(
            f"model.discriminator.backbone {cfg.backbone!r} is not a timm model. Pick one of timm.list_models(), "
            "e.g. convnext_large, convnext_tiny, efficientnet_b0."
        )
    if cfg.weights:
        path = Path(cfg.weights)
        if not path.is_file():
            raise ConfigError(f"Backbone weights file {path} does not exist (model.discriminator.weights / --backbone-weights).")
        try:
            return timm.create_model(cfg.backbone, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs)
        except Exception as e:  # timm raises a mix of RuntimeError/KeyError/pickle errors for a bad file
            raise ConfigError(
                f"Could not load backbone weights {path} into {cfg.backbone}: {e}. Give a safetensors file or a "
                "weights-only state dict of this exact timm model."
            ) from None
    if cfg.pretrained:
        try:
            return timm.create_model(cfg.backbone, pretrained=True, **kwargs)
        except Exception as e:  # no network, no cached weights
            raise ConfigError(
                f"Could not fetch ImageNet weights for {cfg.backbone} ({type(e).__name__}: {e}). Download them where "
                "the Hugging Face hub is reachable and pass --backbone-weights FILE, or set "
                "model.discriminator.pretrained=false (a random backbone: FID will suffer)."
            ) from None
    log.warning(
        "The discriminator backbone %s is RANDOMLY initialised (pretrained=false, no weights file). DP-SIMS relies on "
        "a pre-trained backbone: expect a much worse FID. Pass --backbone-weights FILE for real training.",
        cfg.backbone,
    )
    return timm.create_model(cfg.backbone, pretrained=False, **kwargs)


class Discriminator(nn.Module):
    def __init__(self, num_classes: int, cfg: DiscriminatorConfig | None = None, backbone: nn.Module | None = None):
        super().__init__()
        cfg = cfg or DiscriminatorConfig()
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = backbone if backbone is not None else build_backbone(cfg)
        self.frozen = cfg.freeze
        if self.frozen:
            self.backbone.requires_grad_(False)
            self.backbone.eval()
        pcfg = getattr(self.backbone, "pretrained_cfg", None) or {}
        mean = pcfg.get("mean", (0.485, 0.456, 0.406))
        std = pcfg.get("std", (0.229, 0.224, 0.225))
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

        info = self.backbone.feature_info
        chans, strides = list(info.channels()), list(info.reduction())
        dch, sch = cfg.decoder_channels, cfg.stem_channels
        self.strides = strides
        self.condition = nn.ModuleList(FeatureConditioning(c, dch) for c in chans)
        self.stem1 = nn.Sequential(nn.Conv2d(3, sch, 3, padding=1), nn.LeakyReLU(0.2))
        self.stem2 = nn.Sequential(nn.Conv2d(sch, sch, 3, stride=2, padding=1), nn.LeakyReLU(0.2))
        # decoder stages from the deepest backbone stride up to stride 1; extra stem skips at strides 2 and 1
        self.up_strides = sorted(set(strides[:-1]) | {2, 1}, reverse=True)
        self.up_strides = [s for s in self.up_strides if s < strides[-1]]
        # full width down to stride 4, then half per halving of the stride (U-Net practice: fine stages are costly)
        width = {s: max(sch, dch * min(s, 4) // 4) for s in self.up_strides}
        stages, cin = [], dch
        for s in self.up_strides:
            skip = dch * strides.count(s) + (sch if s in (1, 2) else 0)
            stages.append(_conv_block(cin + skip, width[s]))
            cin = width[s]
        self.decoder = nn.ModuleList(stages)
        self.bottom = _conv_block(dch, dch)
        self.head = nn.Conv2d(cin, num_classes + 1, 1)
        self.feature_stride = 4 if 4 in self.up_strides else self.up_strides[0]

    def train(self, mode: bool = True) -> Discriminator:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()
        return self

    def trainable_parameters(self, backbone: bool) -> list[nn.Parameter]:
        ids = {id(p) for p in self.backbone.parameters()}
        return [p for p in self.parameters() if p.requires_grad and ((id(p) in ids) == backbone)]

    def forward(self, image: torch.Tensor) -> DiscriminatorOutput:
        x = ((image + 1) * 0.5 - self.mean) / self.std
        # a frozen backbone needs no graph unless gradients must flow back to the image (generator step)
        with torch.set_grad_enabled(torch.is_grad_enabled() and (not self.frozen or image.requires_grad)):
            feats = self.backbone(x)
        cond = [c(f) for c, f in zip(self.condition, feats)]
        by_stride: dict[int, list[torch.Tensor]] = {}
        for s, f in zip(self.strides, cond):
            by_stride.setdefault(s, []).append(f)
        s1 = self.stem1(image)
        s2 = self.stem2(s1)
        by_stride.setdefault(1, []).append(s1)
        by_stride.setdefault(2, []).append(s2)

        h = self.bottom(by_stride[self.strides[-1]][-1])
        features = h
        for s, stage in zip(self.up_strides, self.decoder):
            skips = by_stride[s]
            h = F.interpolate(h, size=skips[0].shape[-2:], mode="bilinear", align_corners=False)
            h = stage(torch.cat([h, *skips], dim=1))
            if s == self.feature_stride:
                features = h
        if h.shape[-2:] != image.shape[-2:]:
            h = F.interpolate(h, size=image.shape[-2:], mode="bilinear", align_corners=False)
        return DiscriminatorOutput(self.head(h), features)

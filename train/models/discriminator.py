"""The DP-SIMS discriminator: a pre-trained timm backbone as the encoder of a U-Net segmenter.

Every pixel is classified into the N semantic classes or "fake" (class 0 of the N+1 output, as in OASIS).
- Encoder: any timm model built with ``features_only=True``; its ``feature_info`` gives channels and strides.
  Inputs in [-1, 1] are normalised with the backbone's own pretrained mean/std. Frozen by default, and then kept
  in eval mode even when the discriminator is put in train mode (its BN/LN statistics never move).
- Feature conditioning: raw backbone features are ill-conditioned (some channels dominate others by orders of
  magnitude), so each channel is standardised with its mean and variance over the real images' features (running
  statistics, updated only by real batches: the frozen backbone makes them stationary), projected by a 1x1 conv
  and gated by a sigmoid before the decoder sees it (docs/paper.md: discriminator).
- Decoder: trainable, top-down with skip connections, down to full resolution; a small trainable stem on the
  image gives the full- and half-resolution skips the backbone (stride >= 4) does not have.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from dpsims.errors import ConfigError
from dpsims.logs import get_logger
from train.config import DiscriminatorConfig

log = get_logger(__name__)


class DiscriminatorOutput(NamedTuple):
    logits: torch.Tensor
    """[N, num_classes + 1, H, W]; channel 0 is "fake", channel c + 1 is semantic class c."""
    features: torch.Tensor
    """Decoder features at stride 4, used by the patch contrastive loss."""


class FeatureConditioning(nn.Module):
    """Standardise each channel, project by a 1x1 conv, and gate with a sigmoid: ``v * sigmoid(g)``, ``[v, g] =
    W (f - mu) / sigma``.

    ``mu`` and ``sigma`` are per channel, over batch and positions of *real* images only (``update=True`` in the
    discriminator's real pass, train mode): an exponential moving average (``momentum``) started from the first
    real batch. Statistics of the batch at hand would differ between real and fake batches, and per-sample
    statistics carry nothing at the deepest stage of a small image (2x2 positions at 64x64)."""

    def __init__(self, cin: int, cout: int, momentum: float = 0.01, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(cin))
        self.register_buffer("var", torch.ones(cin))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))
        self.proj = nn.Conv2d(cin, 2 * cout, 1)

    @torch.no_grad()
    def _update(self, f: torch.Tensor) -> None:
        x = f.detach().float()
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # under torchrun every process takes the statistics of the whole global batch of real images (the
            # processes hold equal shares), so all of them keep the same buffers, as one process would
            moments = torch.stack([mean, var + mean * mean])
            dist.all_reduce(moments)
            moments /= dist.get_world_size()
            mean, var = moments[0], (moments[1] - moments[0] * moments[0]).clamp_min(0)
        rate = 1.0 if int(self.updates) == 0 else self.momentum
        self.mean.lerp_(mean, rate)
        self.var.lerp_(var, rate)
        self.updates += 1

    def forward(self, f: torch.Tensor, update: bool | int = False) -> torch.Tensor:
        """``update``: True updates the statistics from the whole batch, an int ``n`` from its first ``n`` images
        (the real ones of a batch that also holds generated images), before the batch is standardised."""
        if update is not False and self.training:
            n = f.shape[0] if update is True else int(update)
            if n > 0:
                self._update(f[:n])
        scale = torch.rsqrt(self.var + self.eps).to(f.dtype).view(1, -1, 1, 1)
        value, gate = self.proj((f - self.mean.to(f.dtype).view(1, -1, 1, 1)) * scale).chunk(2, dim=1)
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


def build_backbone(cfg: DiscriminatorConfig, load_weights: bool = True) -> nn.Module:
    """timm backbone with ``features_only=True``; ImageNet weights from a package of the ``[pretrained]`` extra
    (``pip:NAME``, :mod:`train.models.pretrained`), a local file, the hub, or none (with a warning).

    ``load_weights=False`` builds the bare architecture: for a discriminator whose weights come from a checkpoint
    (resume, evaluation), which holds the whole discriminator, frozen backbone included, so neither the weights
    package nor the hub is needed then."""
    import timm

    from train.models import pretrained as named

    kwargs = {"features_only": True}
    if cfg.out_indices is not None:
        kwargs["out_indices"] = tuple(cfg.out_indices)
    if not timm.is_model(cfg.backbone):
        raise ConfigError(
            f"model.discriminator.backbone {cfg.backbone!r} is not a timm model. Pick one of timm.list_models(), "
            "e.g. convnext_large, convnext_tiny, efficientnet_b0."
        )
    if not load_weights:
        return timm.create_model(cfg.backbone, pretrained=False, **kwargs)
    if named.is_named(cfg.weights):
        spec = named.lookup(cfg.weights)
        if spec.timm_model != cfg.backbone:
            raise ConfigError(
                f"model.discriminator.weights={cfg.weights} holds timm's {spec.timm_model}, but the backbone is "
                f"{cfg.backbone}: set model.discriminator.backbone={spec.timm_model}."
            )
        model = timm.create_model(cfg.backbone, pretrained=False, **kwargs)
        log.info("discriminator backbone %s: ImageNet weights from %s", cfg.backbone, spec.distribution)
        return named.load_into(model, cfg.weights)
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
    def __init__(self, num_classes: int, cfg: DiscriminatorConfig | None = None, backbone: nn.Module | None = None,
                 load_weights: bool = True):
        super().__init__()
        cfg = cfg or DiscriminatorConfig()
        self.cfg = cfg
        self.num_classes = num_classes
        self.backbone = backbone if backbone is not None else build_backbone(cfg, load_weights)
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

    def forward(self, image: torch.Tensor, real: bool | int = False) -> DiscriminatorOutput:
        """``real=True`` for a batch of real images: in train mode it updates the feature conditioning's
        statistics (:class:`FeatureConditioning`); ``real=n``: only the first ``n`` images are real (the training
        step's one pass over real, generated and LabelMix images). Every other layer treats each image on its
        own (frozen backbone in eval mode, GroupNorm in the decoder), so one pass over a concatenated batch gives
        what separate passes give."""
        x = ((image + 1) * 0.5 - self.mean) / self.std
        # a frozen backbone needs no graph unless gradients must flow back to the image (generator step)
        with torch.set_grad_enabled(torch.is_grad_enabled() and (not self.frozen or image.requires_grad)):
            feats = self.backbone(x)
        cond = [c(f, update=real) for c, f in zip(self.condition, feats)]
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

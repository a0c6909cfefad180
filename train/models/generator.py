"""The DP-SIMS generator: a label encoder with context modeling and cross-attention noise, and a spatially
adaptive image branch.

Graph contract (docs/design.md, "The generator graph contract"): ``forward(label, noise) -> image`` with
``label`` int [N, H, W] holding class ids, ``noise`` float [N, T, D] standard normal noise tokens, ``image`` float
[N, 3, H, W] in [-1, 1]. The one-hot encoding happens inside (a comparison against a constant range), no random op
lives in ``forward`` and there is no data-dependent Python control flow, so the module exports to ONNX,
torch.export and CoreML unchanged.

Structure
- Label encoder: the full-resolution one-hot map goes through a conv stem and stride-2 convs down to the lowest
  resolution. At every scale (or the ``context_levels`` lowest) the features cross-attend to the noise tokens
  (that is how noise enters); at the ``attn_levels`` lowest scales they also self-attend over all positions, so
  each region sees the whole layout. A top-down pass (upsample + add) brings that context to the fine scales.
- Image branch: starts from the label map average-pooled to the lowest resolution and upsamples x2 per stage;
  each residual block is modulated (SPADE-style: parameter-free batch norm, then per-pixel scale and shift
  predicted from the label encoder's features at that scale). A final conv + tanh gives RGB.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from train.config import GeneratorConfig


def one_hot_labels(label: torch.Tensor, num_classes: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[N, H, W] integer ids -> [N, C, H, W] float one-hot, as a comparison with a constant range (exports as
    Equal + Cast). Ids outside 0..C-1 give an all-zero pixel."""
    classes = torch.arange(num_classes, device=label.device, dtype=label.dtype).view(1, num_classes, 1, 1)
    return (label.unsqueeze(1) == classes).to(dtype)


class Attention(nn.Module):
    """Multi-head attention from plain matmul/softmax (exports everywhere, no fused kernels needed).

    ``x`` [N, L, C] queries, ``context`` [N, S, Cc] keys/values. Scores are computed in float32."""

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.head_dim = dim // heads
        self.q = nn.Linear(dim, dim, bias=False)
        self.kv = nn.Linear(context_dim, 2 * dim, bias=False)
        self.out = nn.Linear(dim, dim)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        n, length, dim = x.shape
        q = self.q(x).reshape(n, length, self.heads, self.head_dim).transpose(1, 2)
        k, v = self.kv(context).reshape(n, -1, 2, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        scores = torch.matmul(q, k.transpose(-1, -2)) * (1.0 / math.sqrt(self.head_dim))
        attn = torch.softmax(scores.float(), dim=-1).to(v.dtype)
        y = torch.matmul(attn, v).transpose(1, 2).reshape(n, length, dim)
        return self.out(y)


class ContextBlock(nn.Module):
    """Pre-norm transformer block on a feature map: optional self-attention over all positions (context
    modeling), cross-attention to the noise tokens (noise injection), and an MLP."""

    def __init__(self, dim: int, noise_dim: int, heads: int, self_attention: bool):
        super().__init__()
        self.self_attention = self_attention
        if self_attention:
            self.norm_self = nn.LayerNorm(dim)
            self.attn_self = Attention(dim, dim, heads)
        self.norm_cross = nn.LayerNorm(dim)
        self.norm_noise = nn.LayerNorm(noise_dim)
        self.attn_cross = Attention(dim, noise_dim, heads)
        self.norm_mlp = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        # absolute position, so self-attention knows where things are (a depthwise conv, resolution free)
        self.pos = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        x = x + self.pos(x)
        t = x.flatten(2).transpose(1, 2)  # [N, HW, C]
        if self.self_attention:
            s = self.norm_self(t)
            t = t + self.attn_self(s, s)
        t = t + self.attn_cross(self.norm_cross(t), self.norm_noise(noise))
        t = t + self.mlp(self.norm_mlp(t))
        return t.transpose(1, 2).reshape(n, c, h, w)


class LabelEncoder(nn.Module):
    """Full-resolution one-hot map -> one feature map per generator scale (lowest first)."""

    def __init__(self, num_classes: int, cfg: GeneratorConfig):
        super().__init__()
        ch = cfg.label_channels
        levels = len(cfg.channel_mults)
        k = cfg.stem_kernel
        self.stem = nn.Sequential(nn.Conv2d(num_classes, ch, k, padding=k // 2), nn.LeakyReLU(0.2))
        self.down = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ch, ch, 3, stride=2, padding=1), nn.LeakyReLU(0.2)) for _ in range(levels - 1)
        )
        # context[i] acts on scale i counted from the lowest resolution; finer scales have none
        n_context = levels if cfg.context_levels is None else cfg.context_levels
        self.context = nn.ModuleList(
            ContextBlock(ch, cfg.noise_dim, cfg.attn_heads, self_attention=i < cfg.attn_levels) for i in range(n_context)
        )
        # a 3x3 lateral conv after a context block; 1x1 on the scales without one, where it would only stack a
        # second linear 3x3 on the modulation's shared 3x3 conv
        self.lateral = nn.ModuleList(
            nn.Conv2d(ch, ch, 3, padding=1) if i < n_context else nn.Conv2d(ch, ch, 1) for i in range(levels)
        )

    def stem_by_lookup(self, label: torch.Tensor) -> torch.Tensor:
        """``stem(one_hot(label))`` without the convolution: a kxk conv on a one-hot map adds, for each of the k*k
        offsets, the weight column of the class found there, so it is k*k table lookups (Gather) and adds. Same
        numbers up to float summation order, about K*k*k times fewer operations (K classes): at 256x256 with 151
        classes a 3x3 stem is 11 GFLOP of the graph, and quantizers keep it float. Used outside training."""
        conv = self.stem[0]
        k, size = conv.in_channels, conv.kernel_size[0]
        table = conv.weight.permute(2, 3, 0, 1)  # [k, k, C, K]: channels first, so lookups give [C, N*H*W]
        table = torch.cat([table, table.new_zeros(size, size, table.shape[2], 1)], dim=3)  # id K: no class (zero)
        none = torch.full_like(label, k)
        ids = torch.where(label < 0, none, torch.where(label > k, none, label))  # ids outside 0..K-1: no class
        pad = size // 2
        h, w = label.shape[-2:]
        ids = F.pad(ids, (pad, pad, pad, pad), value=k).long()  # zero padding of the conv = the empty class
        # constant slices: static H, W in exported graphs
        window = [slice(d, d - 2 * pad if d < 2 * pad else None) for d in range(size)]
        out = conv.bias.view(-1, 1)
        for dy in range(size):
            for dx in range(size):
                out = out + torch.index_select(table[dy, dx], 1, ids[:, window[dy], window[dx]].reshape(-1))
        # [C, N, H, W] -> [N, C, H, W] moves whole H*W planes (a channels-last gather needed a full transpose:
        # 7 ms of a 273 ms paper-size INT8 call on the CPU)
        return self.stem[1](out.reshape(out.shape[0], -1, h, w).transpose(0, 1))

    def forward(self, onehot: torch.Tensor, noise: torch.Tensor, label: torch.Tensor | None = None) -> list[torch.Tensor]:
        use_lookup = label is not None and not self.training
        feats = [self.stem_by_lookup(label) if use_lookup else self.stem(onehot)]
        for down in self.down:
            feats.append(down(feats[-1]))
        feats = feats[::-1]  # lowest resolution first
        outs: list[torch.Tensor] = []
        prev = None
        for i, f in enumerate(feats):
            if prev is not None:
                f = f + F.interpolate(prev, scale_factor=2.0, mode="nearest")
            if i < len(self.context):
                f = self.context[i](f, noise)
            prev = f
            outs.append(self.lateral[i](f))
        return outs


class SPADE(nn.Module):
    """Parameter-free batch norm, then per-pixel scale/shift predicted from the block's modulation features."""

    def __init__(self, channels: int, hidden: int, kernel: int = 3):
        super().__init__()
        self.norm = nn.BatchNorm2d(channels, affine=False)
        self.gamma = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2)
        self.beta = nn.Conv2d(hidden, channels, kernel, padding=kernel // 2)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.norm(x) * (1 + self.gamma(h)) + self.beta(h)


class SPADEResBlock(nn.Module):
    """Residual block whose norms are modulated by the label encoder's features. The label features go through
    one shared conv per block (not one per norm, as in SPADE): a third of the modulation cost, same outputs."""

    def __init__(self, cin: int, cout: int, cond_channels: int, hidden: int, kernel: int = 3):
        super().__init__()
        mid = min(cin, cout)
        self.shared = nn.Sequential(nn.Conv2d(cond_channels, hidden, 3, padding=1), nn.ReLU())
        self.norm0 = SPADE(cin, hidden, kernel)
        self.conv0 = nn.Conv2d(cin, mid, 3, padding=1)
        self.norm1 = SPADE(mid, hidden, kernel)
        self.conv1 = nn.Conv2d(mid, cout, 3, padding=1)
        self.skip = None
        if cin != cout:
            self.skip_norm = SPADE(cin, hidden, kernel)
            self.skip = nn.Conv2d(cin, cout, 1, bias=False)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        h = self.shared(cond)
        s = x if self.skip is None else self.skip(self.skip_norm(x, h))
        y = self.conv0(F.leaky_relu(self.norm0(x, h), 0.2))
        y = self.conv1(F.leaky_relu(self.norm1(y, h), 0.2))
        return s + y


class Generator(nn.Module):
    def __init__(self, num_classes: int, cfg: GeneratorConfig | None = None):
        super().__init__()
        cfg = cfg or GeneratorConfig()
        self.cfg = cfg
        self.num_classes = num_classes
        self.num_levels = len(cfg.channel_mults)
        self.stride = 2 ** (self.num_levels - 1)
        chans = [cfg.base_channels * m for m in cfg.channel_mults]
        self.encoder = LabelEncoder(num_classes, cfg)
        self.head = nn.Conv2d(num_classes, chans[0], 3, padding=1)
        blocks = []
        for i, c in enumerate(chans):
            cin = chans[i - 1] if i > 0 else chans[0]
            stage = [SPADEResBlock(cin, c, cfg.label_channels, cfg.spade_hidden, cfg.spade_kernel)]
            stage += [SPADEResBlock(c, c, cfg.label_channels, cfg.spade_hidden, cfg.spade_kernel)
                      for _ in range(cfg.blocks_per_stage - 1)]
            blocks.append(nn.ModuleList(stage))
        self.blocks = nn.ModuleList(blocks)
        self.to_rgb = nn.Conv2d(chans[-1], 3, 3, padding=1)

    @property
    def noise_shape(self) -> tuple[int, int]:
        """Per-sample noise shape (tokens, dim); the graph input is [N, *noise_shape]."""
        return (self.cfg.noise_tokens, self.cfg.noise_dim)

    def sample_noise(self, batch: int, generator: torch.Generator | None = None, device=None) -> torch.Tensor:
        return torch.randn(batch, *self.noise_shape, generator=generator, device=device)

    def forward(self, label: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        onehot = one_hot_labels(label, self.num_classes, noise.dtype)  # the weights' dtype (fp16/bf16 exports)
        feats = self.encoder(onehot, noise, label)
        x = self.head(F.avg_pool2d(onehot, self.stride) if self.stride > 1 else onehot)
        for i, stage in enumerate(self.blocks):
            if i > 0:
                x = F.interpolate(x, scale_factor=2.0, mode="nearest")
            for block in stage:
                x = block(x, feats[i])
        return torch.tanh(self.to_rgb(F.leaky_relu(x, 0.2)))

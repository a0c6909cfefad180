"""A student generator started from its teacher's most important channels (``distill.init: teacher-channels``).

The student of a width multiplier has the teacher's layers with fewer channels. Every channel dimension of the
generator belongs to a *group*: the dimensions that must keep the same channels because they meet in a sum or a
layer's input and output (the label encoder's width, tied across scales by its top-down additions and residual
context blocks; an image-branch stage's width, tied by its residual blocks; a block's inner and modulation
channels; a lateral conv's output; an attention's query/key and value channels, per head). For each group the
student keeps the teacher's channels with the largest summed absolute weight over every parameter that touches
them (filters that produce them and weights that read them: the L1 criterion of pruning by filter norm), in their
original order, and each student tensor is the teacher's tensor at those indices.

Where shapes do not allow it the student tensor keeps its random initialisation and the report says so: a group
wider in the student than in the teacher, a different number of attention heads, a parameter the teacher lacks
(other depth or levels). A kxk kernel taken down to 1x1 (e.g. the ``-s8`` student's ``spade_kernel: 1``) is the
sum of the kxk taps: the 1x1 conv that gives the same output on locally constant input.

Whether this start helps is measured in benchmarks/RESULTS.md (docs/design.md, "Distillation").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

KERNEL = "kernel"
"""A spatial kernel dimension (summed when the student's kernel is 1 and the teacher's larger)."""


@dataclass(frozen=True)
class Cat:
    """A dimension that stacks groups (an attention's keys and values: ``kv``)."""

    parts: tuple[str, ...]


@dataclass
class InitReport:
    copied: list[str] = field(default_factory=list)
    random: dict[str, str] = field(default_factory=dict)
    """Student tensors left at their random start, each with the reason."""

    def summary(self) -> str:
        text = f"{len(self.copied)} of {len(self.copied) + len(self.random)} generator tensors from the teacher's channels"
        if self.random:
            shown = ", ".join(f"{k} ({v})" for k, v in list(self.random.items())[:4])
            text += f"; random: {shown}" + (" ..." if len(self.random) > 4 else "")
        return text


def channel_groups(g: nn.Module) -> tuple[dict[str, tuple], dict[str, int]]:
    """For each parameter and buffer of a :class:`train.models.generator.Generator`: the group of each dimension
    (a group name, :class:`Cat`, :data:`KERNEL`, or None for a dimension that is never sliced: classes, noise,
    RGB, a depthwise conv's 1). Also the head count of each attention group (its channels are [heads, head_dim])."""
    dims: dict[str, tuple] = {}
    heads: dict[str, int] = {}

    def conv2d(name: str, out, inp) -> None:
        dims[f"{name}.weight"] = (out, inp, KERNEL, KERNEL)
        dims[f"{name}.bias"] = (out,)

    def norm(name: str, group) -> None:  # LayerNorm, or BatchNorm with its statistics
        for p in ("weight", "bias", "running_mean", "running_var"):
            dims[f"{name}.{p}"] = (group,)
        dims[f"{name}.num_batches_tracked"] = ()

    enc = "encoder"
    conv2d("encoder.stem.0", enc, None)
    for i in range(len(g.encoder.down)):
        conv2d(f"encoder.down.{i}.0", enc, enc)
    for i, block in enumerate(g.encoder.context):
        p = f"encoder.context.{i}"
        conv2d(f"{p}.pos", enc, None)
        attns = [("attn_cross", None)]
        if block.self_attention:
            norm(f"{p}.norm_self", enc)
            attns.append(("attn_self", enc))
        for a, context in attns:
            qk, v = f"{p}.{a}.qk", f"{p}.{a}.v"
            heads[qk] = heads[v] = getattr(block, a).heads
            dims[f"{p}.{a}.q.weight"] = (qk, enc)
            dims[f"{p}.{a}.kv.weight"] = (Cat((qk, v)), context)
            dims[f"{p}.{a}.out.weight"] = (enc, v)
            dims[f"{p}.{a}.out.bias"] = (enc,)
        norm(f"{p}.norm_cross", enc)
        norm(f"{p}.norm_noise", None)
        norm(f"{p}.norm_mlp", enc)
        dims[f"{p}.mlp.0.weight"] = (f"{p}.mlp", enc)
        dims[f"{p}.mlp.0.bias"] = (f"{p}.mlp",)
        dims[f"{p}.mlp.2.weight"] = (enc, f"{p}.mlp")
        dims[f"{p}.mlp.2.bias"] = (enc,)
    for i in range(len(g.encoder.lateral)):
        conv2d(f"encoder.lateral.{i}", f"lateral.{i}", enc)
    conv2d("head", "stage.0", None)
    for i, stage in enumerate(g.blocks):
        for j, block in enumerate(stage):
            p = f"blocks.{i}.{j}"
            cin = f"stage.{i - 1}" if i > 0 and j == 0 else f"stage.{i}"
            cout, mid, hidden = f"stage.{i}", f"{p}.mid", f"{p}.hidden"
            conv2d(f"{p}.shared.0", hidden, f"lateral.{i}")
            for n, group in (("norm0", cin), ("norm1", mid)) + ((("skip_norm", cin),) if block.skip is not None else ()):
                norm(f"{p}.{n}.norm", group)
                conv2d(f"{p}.{n}.gamma", group, hidden)
                conv2d(f"{p}.{n}.beta", group, hidden)
            conv2d(f"{p}.conv0", mid, cin)
            conv2d(f"{p}.conv1", cout, mid)
            if block.skip is not None:
                dims[f"{p}.skip.weight"] = (cout, cin, KERNEL, KERNEL)
    conv2d("to_rgb", None, f"stage.{len(g.blocks) - 1}")
    return dims, heads


def _spans(spec, size: int) -> list[tuple[str, int]]:
    """The (group, size) pieces of one dimension of ``size`` channels."""
    if isinstance(spec, Cat):
        return [(part, size // len(spec.parts)) for part in spec.parts]
    return [(spec, size)]


def _importance(teacher: dict[str, torch.Tensor], dims: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """Per group, the summed |weight| of every teacher parameter over its channels."""
    scores: dict[str, torch.Tensor] = {}
    for name, spec in dims.items():
        w = teacher.get(name)
        if w is None or not w.is_floating_point() or "running_" in name:
            continue
        a = w.detach().abs().float()
        for d, s in enumerate(spec):
            if s is None or s == KERNEL:
                continue
            per = a.transpose(0, d).reshape(a.shape[d], -1).sum(1)
            offset = 0
            for group, n in _spans(s, a.shape[d]):
                scores[group] = scores.get(group, 0) + per[offset:offset + n]
                offset += n
    return scores


def _select(score: torch.Tensor, keep: int, heads: int | None) -> torch.Tensor | None:
    """The ``keep`` most important indices in their order; with ``heads``, the same number per head."""
    total = score.numel()
    if keep > total:
        return None
    if not heads:
        return torch.sort(torch.topk(score, keep).indices).values
    if total % heads or keep % heads:
        return None
    t_dim, s_dim = total // heads, keep // heads
    per_head = [h * t_dim + torch.sort(torch.topk(score[h * t_dim:(h + 1) * t_dim], s_dim).indices).values
                for h in range(heads)]
    return torch.cat(per_head)


@torch.no_grad()
def init_from_teacher(student: nn.Module, teacher: nn.Module) -> InitReport:
    """Copy into ``student`` (in place) the teacher's most important channels wherever the shapes allow."""
    dims, heads = channel_groups(teacher)
    s_dims, s_heads = channel_groups(student)
    t_state = teacher.state_dict()
    s_state = student.state_dict()
    scores = _importance(t_state, dims)
    # each group's student size, read off the student's tensors
    sizes: dict[str, int] = {}
    for name, spec in s_dims.items():
        if name in s_state:
            for d, s in enumerate(spec):
                if s is not None and s != KERNEL:
                    for group, n in _spans(s, s_state[name].shape[d]):
                        sizes.setdefault(group, n)
    chosen: dict[str, torch.Tensor | None] = {}
    for group, n in sizes.items():
        fits = group in scores and s_heads.get(group) == heads.get(group)
        chosen[group] = _select(scores[group], n, heads.get(group)) if fits else None
    report = InitReport()
    for name, target in s_state.items():
        spec = s_dims.get(name)
        source = t_state.get(name)
        if spec is None or source is None or dims.get(name) != spec or source.dim() != target.dim():
            report.random[name] = "no counterpart in the teacher"
            continue
        w, why = source, None
        for d, s in enumerate(spec):
            if s is None:
                if w.shape[d] != target.shape[d]:
                    why = f"dim {d}: {w.shape[d]} in the teacher, {target.shape[d]} in the student"
            elif s == KERNEL:
                if w.shape[d] != target.shape[d]:
                    if target.shape[d] == 1:
                        w = w.sum(d, keepdim=True)
                    else:
                        why = f"a {target.shape[d]}-wide kernel from a {w.shape[d]}-wide one"
            else:
                pieces, offset = [], 0
                for group, n in _spans(s, w.shape[d]):
                    idx = chosen.get(group)
                    if idx is None:
                        why = f"group {group}: {n} teacher channels for {sizes.get(group)} or heads differ"
                        break
                    pieces.append(idx + offset)
                    offset += n
                if why is None:
                    w = w.index_select(d, torch.cat(pieces).to(w.device))
            if why:
                break
        if why is None and w.shape != target.shape:
            why = f"shape {tuple(w.shape)} after slicing, {tuple(target.shape)} wanted"
        if why:
            report.random[name] = why
            continue
        target.copy_(w.to(target.dtype))
        report.copied.append(name)
    return report

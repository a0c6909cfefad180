"""The student's start from the teacher's most important channels (train/student_init.py)."""

import dataclasses

import pytest
import torch

from train.config import GeneratorConfig
from train.models.generator import Generator
from train.student_init import KERNEL, Cat, channel_groups, init_from_teacher

TEACHER = GeneratorConfig(base_channels=8, channel_mults=[2, 2, 1], label_channels=8, attn_levels=1, attn_heads=2,
                          noise_tokens=4, noise_dim=8, spade_hidden=8, spade_kernel=3)


def make(cfg: GeneratorConfig, seed: int) -> Generator:
    torch.manual_seed(seed)
    return Generator(5, cfg)


def half(**changes) -> GeneratorConfig:
    return dataclasses.replace(TEACHER, base_channels=4, label_channels=4, spade_hidden=4, **changes)


def test_every_tensor_has_its_channel_groups_and_a_same_size_student_is_the_teacher():
    teacher = make(TEACHER, 0)
    dims, _ = channel_groups(teacher)
    assert set(teacher.state_dict()) <= set(dims)
    student = make(TEACHER, 1)
    report = init_from_teacher(student, teacher)
    assert not report.random
    for k, v in teacher.state_dict().items():
        assert torch.equal(student.state_dict()[k], v), k
    label, noise = torch.randint(0, 5, (2, 16, 16)), torch.randn(2, 4, 8)
    assert torch.equal(student.eval()(label, noise), teacher.eval()(label, noise))


def _boost(teacher: Generator, student: Generator) -> dict[str, torch.Tensor]:
    """Makes a random subset of each group's channels (of the student's size; per head for attention) 100x heavier
    in every teacher tensor that touches them, and returns the subsets: the channels the student must keep."""
    dims, heads = channel_groups(teacher)
    t, s = teacher.state_dict(), student.state_dict()
    sizes = {}
    for name, spec in dims.items():
        if name in t:
            for d, group in enumerate(spec):
                for part, n_t, n_s in _parts(group, t[name].shape[d], s[name].shape[d]):
                    sizes[part] = (n_t, n_s)
    gen = torch.Generator().manual_seed(7)
    keep = {}
    for group, (n_t, n_s) in sizes.items():
        h = heads.get(group, 1)
        keep[group] = torch.cat([g * (n_t // h) + torch.randperm(n_t // h, generator=gen)[: n_s // h].sort().values
                                 for g in range(h)])
    with torch.no_grad():
        for name, p in teacher.named_parameters():
            for d, group in enumerate(dims[name]):
                offset = 0
                for part, n_t, _ in _parts(group, p.shape[d], s[name].shape[d]):
                    idx = keep[part] + offset
                    p.index_copy_(d, idx, p.index_select(d, idx) * 100)
                    offset += n_t
    return keep


def _parts(group, n_t: int, n_s: int):
    if group is None or group == KERNEL:
        return []
    parts = group.parts if isinstance(group, Cat) else (group,)
    return [(part, n_t // len(parts), n_s // len(parts)) for part in parts]


@pytest.mark.parametrize("kernel", [3, 1])
def test_the_student_holds_the_heaviest_channels_of_every_group_in_order(kernel):
    teacher = make(TEACHER, 0)
    student = make(half(spade_kernel=kernel), 1)
    keep = _boost(teacher, student)
    report = init_from_teacher(student, teacher)
    assert not report.random
    dims, _ = channel_groups(teacher)
    t = teacher.state_dict()
    for name, got in student.state_dict().items():
        want = t[name]
        for d, group in enumerate(dims[name]):
            if group == KERNEL and got.shape[d] != want.shape[d]:
                want = want.sum(d, keepdim=True)  # 1x1 from 3x3: the taps' sum
            elif group is not None and group != KERNEL:
                parts, offset = [], 0
                for part, n_t, _ in _parts(group, want.shape[d], got.shape[d]):
                    parts.append(keep[part] + offset)
                    offset += n_t
                want = want.index_select(d, torch.cat(parts))
        torch.testing.assert_close(got, want, rtol=0, atol=0, msg=name)


def test_attention_keeps_as_many_channels_from_each_head():
    """Head 0 of a query/key group holds the 4 heaviest channels; the 2-head student still takes 2 per head."""
    teacher, student = make(TEACHER, 0), make(half(), 1)
    with torch.no_grad():
        attn = teacher.encoder.context[0].attn_self
        attn.q.weight[:4] *= 100  # the teacher's head 0 (channels 0-3 of 8)
        attn.kv.weight[:4] *= 100  # its keys
    init_from_teacher(student, teacher)
    q_t, q_s = attn.q.weight, student.encoder.context[0].attn_self.q.weight
    rows = [next(i for i in range(8) if torch.equal(q_s[r], q_t[i, _encoder_keep(teacher, student)])) for r in range(4)]
    assert [r // 4 for r in rows] == [0, 0, 1, 1]


def _encoder_keep(teacher: Generator, student: Generator) -> torch.Tensor:
    """The teacher's encoder channels the student kept (from the stem's bias, which is sliced by them alone)."""
    t, s = teacher.encoder.stem[0].bias, student.encoder.stem[0].bias
    return torch.tensor([int((t == v).nonzero()[0]) for v in s])


def test_shapes_that_do_not_fit_stay_random_and_are_named():
    teacher = make(TEACHER, 0)
    other_heads = make(half(attn_heads=4), 1)
    before = {k: v.clone() for k, v in other_heads.state_dict().items()}
    report = init_from_teacher(other_heads, teacher)
    assert "encoder.context.0.attn_self.q.weight" in report.random
    assert torch.equal(other_heads.state_dict()["encoder.context.0.attn_self.q.weight"],
                       before["encoder.context.0.attn_self.q.weight"])
    assert "to_rgb.weight" in report.copied
    deeper = make(dataclasses.replace(half(), channel_mults=[2, 2, 1, 1]), 1)
    report = init_from_teacher(deeper, teacher)
    assert "blocks.3.0.conv0.weight" in report.random and "head.weight" in report.copied
    wider = make(dataclasses.replace(TEACHER, base_channels=16), 1)
    report = init_from_teacher(wider, teacher)
    assert "blocks.0.0.conv0.weight" in report.random and "encoder.stem.0.weight" in report.copied
    assert "random:" in report.summary()

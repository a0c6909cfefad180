"""Distillation (train/distill.py): a student trained against a tiny teacher run made here, on the CPU."""

import copy
import json

import pytest
import torch
from test_train import tiny_cfg

from dpsims.errors import ConfigError
from train.checkpoint import last_checkpoint, load_generator, read_tensors
from train.config import GeneratorConfig
from train.distill import (
    FeatureTaps,
    distill,
    distill_terms,
    kernel_alignment,
    load_teacher,
    make_adapters,
    resolve_student,
    stage_channels,
)
from train.loop import train
from train.models.discriminator import Discriminator
from train.models.generator import Generator

#: the student: half the teacher's image-branch width, a thinner modulation (tests/test_train.py's TINY teacher)
STUDENT = ["model.generator.base_channels=4", "model.generator.spade_hidden=8", "distill.fidelity_samples=4"]
#: fewer forward passes at the end of a run (EMA batch statistics, label consistency): seconds on a shared CPU
QUICK = ["train.ema_bn_batches=1", "eval.label_consistency_samples=4"]


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("teacher") / "run"
    train(tiny_cfg(2, *QUICK), run)
    return run


def student_cfg(teacher_run, steps: int, *extra: str):
    return tiny_cfg(steps, f"distill.teacher={teacher_run}", *STUDENT, *QUICK, *extra)


def read_metrics(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_resumed_distillation_continues_exactly(tmp_path, teacher_run):
    """Student, EMA, discriminator and adapters after 1 + 2 steps (checkpoint, new process state, resume) are the
    weights of 3 uninterrupted steps; the logged losses are the same."""
    extra = ("train.log_every=1", "distill.feature_mode=adapter", "distill.noise=1")  # adapters: trained state
    straight = distill(student_cfg(teacher_run, 3, *extra), tmp_path / "straight")
    distill(student_cfg(teacher_run, 1, *extra), tmp_path / "split")
    torch.manual_seed(123)  # a resumed process starts from other random state: the checkpoint must restore it
    resumed = distill(student_cfg(teacher_run, 3, *extra), tmp_path / "split", resume=True)
    assert resumed.step == straight.step == 3
    a, b = straight.generator_ema.state_dict(), resumed.generator_ema.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs after resume"
    ck_a, ck_b = last_checkpoint(tmp_path / "straight"), last_checkpoint(tmp_path / "split")
    for name in ("generator", "discriminator", "adapters", "optimizer_a"):
        ta, _ = read_tensors(ck_a / f"{name}.safetensors")
        tb, _ = read_tensors(ck_b / f"{name}.safetensors")
        assert ta.keys() == tb.keys() and ta, name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}: {k} differs after resume"
    # the losses of every step; timings, and the evaluation at the split run's last step, differ
    skip = ("it_s", "elapsed_s", "label_consistency")
    logged = [{k: v for k, v in r.items() if k not in skip} for r in read_metrics(tmp_path / "straight")]
    again = [{k: v for k, v in r.items() if k not in skip} for r in read_metrics(tmp_path / "split")]
    assert logged == again and len(logged) == 3
    assert {"distill_l1", "distill_perceptual", "distill_feature", "distill_noise", "loss_g_adv"} <= set(logged[-1])


def test_the_student_starts_from_the_teacher_discriminator_and_records_its_teacher(tmp_path, teacher_run):
    from dpsims.files import sha256_file

    run = tmp_path / "student"
    distill(student_cfg(teacher_run, 1, "train.lr_d=1e-12"), run)  # D barely moves: still the teacher's
    teacher_d, _ = read_tensors(last_checkpoint(teacher_run) / "discriminator.safetensors")
    student_d, _ = read_tensors(last_checkpoint(run) / "discriminator.safetensors")
    assert all(torch.allclose(teacher_d[k], student_d[k], atol=1e-6) for k in teacher_d if "condition" not in k)
    _, info = load_generator(run)
    rec = info.teacher
    assert rec["sha256"] == sha256_file(last_checkpoint(teacher_run) / "generator_ema.safetensors")
    assert rec["step"] == 2 and rec["checkpoint"] == "step_0000002" and rec["run"] == str(teacher_run)
    assert rec["student_macs"] < rec["macs"] and rec["student_parameters"] < rec["parameters"]
    fid = rec["fidelity"]
    assert fid["step"] == 1 and fid["psnr_db"] > 0 and 0 <= fid["label_consistency"] <= 1
    assert 0 <= fid["teacher_label_consistency"] <= 1


def test_a_student_can_start_from_the_teachers_channels(tmp_path, teacher_run):
    from train.student_init import init_from_teacher

    run = tmp_path / "student"
    distill(student_cfg(teacher_run, 1, "distill.init=teacher-channels", "train.lr_g=1e-12"), run)
    teacher = load_teacher(teacher_run)
    want = Generator(8, resolve_student(student_cfg(teacher_run, 1), teacher.info).model.generator)
    assert not init_from_teacher(want, teacher.generator).random
    tensors, _ = read_tensors(last_checkpoint(run) / "generator.safetensors")
    for k, v in want.state_dict().items():
        if "running_" not in k and "num_batches" not in k:  # batch statistics moved with the step
            torch.testing.assert_close(tensors[k], v, atol=1e-6, rtol=0, msg=k)
    assert load_generator(run)[1].teacher["init"] == "teacher-channels"


def _pair(teacher_run, student: Generator | None = None):
    teacher = load_teacher(teacher_run)
    student = copy.deepcopy(teacher.generator) if student is None else student.eval()
    cfg = tiny_cfg(1)
    torch.manual_seed(0)
    disc = Discriminator(8, cfg.model.discriminator, load_weights=False).eval()
    return teacher.generator, student, disc


def _terms(teacher, student, disc, mode, adapters=None):
    levels = list(range(len(teacher.blocks)))
    taps_t, taps_s = FeatureTaps(teacher, levels), FeatureTaps(student, levels)
    if adapters is None:
        adapters = make_adapters(stage_channels(student), stage_channels(teacher))
    g = torch.Generator().manual_seed(0)
    label = torch.randint(0, 8, (2, 32, 32), generator=g)
    label = torch.cat([label, label[:1]])  # the first map again under a second noise draw (distill_noise)
    noise = torch.randn(3, *teacher.noise_shape, generator=g)
    with torch.no_grad():
        with taps_s.capture() as fs:
            s_img = student(label, noise)
        with taps_t.capture() as ft:
            t_img = teacher(label, noise)
        return distill_terms(s_img, t_img, fs, ft, disc, adapters, mode, pairs=1), fs, ft


@pytest.mark.parametrize("mode", ["adapter", "kernel-alignment"])
def test_every_term_is_zero_for_the_teacher_itself_and_positive_for_another_student(teacher_run, mode):
    teacher, same, disc = _pair(teacher_run)
    terms, _, _ = _terms(teacher, same, disc, mode)
    assert set(terms) == {"distill_l1", "distill_perceptual", "distill_feature", "distill_noise"}
    for k, v in terms.items():
        assert float(v) == pytest.approx(0.0, abs=1e-5), k
    torch.manual_seed(1)
    other = Generator(8, GeneratorConfig(**{**vars(teacher.cfg), "base_channels": 4, "spade_hidden": 8}))
    teacher, other, disc = _pair(teacher_run, other)
    terms, _, _ = _terms(teacher, other, disc, mode)
    for k, v in terms.items():
        assert float(v) > 1e-4, k


def test_adapters_map_student_features_onto_the_teacher_at_each_scale(teacher_run):
    torch.manual_seed(1)
    teacher = load_teacher(teacher_run).generator
    student = Generator(8, GeneratorConfig(**{**vars(teacher.cfg), "base_channels": 4, "spade_hidden": 8})).eval()
    assert stage_channels(student) != stage_channels(teacher)
    adapters = make_adapters(stage_channels(student), stage_channels(teacher))
    _, fs, ft = _terms(teacher, student, Discriminator(8, tiny_cfg(1).model.discriminator, load_weights=False).eval(),
                       "adapter", adapters)
    assert len(fs) == len(ft) == len(teacher.blocks) == 3
    for i, (a, s, t) in enumerate(zip(adapters, fs, ft)):
        assert s.shape[-2:] == t.shape[-2:] == (8 * 2**i, 8 * 2**i)
        assert s.shape[1] == stage_channels(student)[i] and a(s).shape == t.shape
    # kernel alignment needs no adapter: 1 for a map against itself, rotated and scaled; below 1 for another
    x = ft[-1]
    q, _ = torch.linalg.qr(torch.randn(x.shape[1], x.shape[1], generator=torch.Generator().manual_seed(0)))
    rotated = 3.0 * torch.einsum("dc,nchw->ndhw", q, x)
    assert torch.allclose(kernel_alignment(x, rotated), torch.ones(len(x)), atol=1e-4)
    assert (kernel_alignment(fs[-1], x) < 0.999).all()


@pytest.mark.parametrize("override, what, values", [
    ("model.generator.noise_dim=16", "noise shape", ("[4, 8]", "[4, 16]")),
    ("data.image_size=[64, 64]", "image size", ("[32, 32]", "[64, 64]")),
    ("data.num_classes=6", "classes", ("has 8", "has 6")),
])
def test_a_teacher_that_does_not_fit_is_refused_before_any_step(tmp_path, teacher_run, override, what, values):
    run = tmp_path / "student"
    with pytest.raises(ConfigError, match=what) as info:
        distill(student_cfg(teacher_run, 2, override), run)
    for v in values:
        assert v in str(info.value)
    assert not run.exists()


def test_width_multiplier_scales_the_teacher_channels(teacher_run):
    teacher = load_teacher(teacher_run)
    cfg = resolve_student(tiny_cfg(1, f"distill.teacher={teacher_run}", "distill.width=0.5",
                                   "model.generator.spade_kernel=1"), teacher.info)
    g, tg = cfg.model.generator, teacher.info.generator
    assert (g.base_channels, g.label_channels, g.spade_hidden) == (tg.base_channels // 2, tg.label_channels // 2,
                                                                    tg.spade_hidden // 2)
    assert g.spade_kernel == 1 and cfg.distill.width is None


def test_plain_training_refuses_a_distillation_config(tmp_path, teacher_run):
    with pytest.raises(ConfigError, match="distill"):
        train(student_cfg(teacher_run, 1), tmp_path / "run")


def test_a_student_artifact_names_its_teacher(tmp_path, teacher_run):
    from export.api import export_generator
    from export.model_card import CARD_NAME
    from runtimes import load_predictor
    from runtimes.spec import Manifest, read_manifest

    run = tmp_path / "student"
    distill(student_cfg(teacher_run, 1), run)
    report = export_generator(run, "onnx", "fp32", out=tmp_path / "artifact", log=lambda *a: None)
    manifest = read_manifest(report.out_dir)
    _, info = load_generator(run)
    assert manifest.distilled_from == info.teacher
    assert manifest.distilled_from["run"] == str(teacher_run) and len(manifest.distilled_from["sha256"]) == 64
    card = (report.out_dir / CARD_NAME).read_text()
    assert "## Distillation" in card and manifest.distilled_from["sha256"][:16] in card
    with load_predictor(report.out_dir) as predictor:  # a student is a generator like any other
        assert predictor.generate(torch.zeros(32, 32, dtype=torch.int64).numpy(), seed=0).shape == (32, 32, 3)
    old = {k: v for k, v in manifest.to_dict().items() if k != "distilled_from"}  # written before the field
    assert Manifest.from_dict(old).distilled_from is None


def test_the_command_line_takes_teacher_and_refuses_a_misfit_in_one_line(tmp_path, teacher_run, capsys):
    from train.__main__ import main

    out = tmp_path / "student"
    assert main(["--config", "synthetic-tiny-s8", "--teacher", str(teacher_run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "cannot teach this student" in err and "[32, 32]" in err and "[64, 64]" in err and "Traceback" not in err
    assert not out.exists()

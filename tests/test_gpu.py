"""Checks that only a CUDA GPU can run (``pytest -m gpu``); each skips, naming what is missing, elsewhere."""

import math

import pytest
import torch
from test_train import read_metrics, tiny_cfg

from train.checkpoint import load_generator
from train.loop import train

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_cuda():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (torch.cuda.is_available() is False)")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_training_steps_on_cuda(tmp_path, amp):
    """Mixed-precision steps on the GPU: losses finite and moving, the GradScaler path (fp16) included, and the
    checkpoint's generator (float32 weights) loads and generates."""
    torch.manual_seed(0)
    result = train(tiny_cfg(20, "train.device=cuda", f"train.amp={amp}"), tmp_path / "run")
    assert result.step == 20
    recs = read_metrics(tmp_path / "run")
    for key in ("loss_d", "loss_g"):
        values = [r[key] for r in recs]
        assert all(math.isfinite(v) for v in values), (key, values)
        assert max(values) - min(values) > 1e-3, (key, values)
    generator, info = load_generator(tmp_path / "run")
    assert next(generator.parameters()).dtype == torch.float32
    label = torch.randint(0, info.num_classes, (2, 32, 32))
    with torch.no_grad():
        image = generator.eval()(label, generator.sample_noise(2))
    assert image.shape == (2, 3, 32, 32) and torch.isfinite(image).all()

"""Exponential moving average of the generator's weights (OASIS/StyleGAN practice) and its batch-norm statistics.

The EMA generator's weights lag the live generator's by about 1 / (1 - decay) steps, so the live generator's
BatchNorm running statistics (copied at every update to keep the EMA usable) do not describe the EMA generator's
own activations. As in OASIS, :func:`recompute_batch_stats` re-estimates them from the EMA generator's own forward
passes in train mode over training label maps before it is sampled, evaluated or saved.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable

import numpy as np
import torch
from torch import nn


def make_ema(model: nn.Module) -> nn.Module:
    ema = copy.deepcopy(model).eval()
    ema.requires_grad_(False)
    return ema


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, decay: float) -> None:
    """ema = decay * ema + (1 - decay) * model for parameters; buffers (BatchNorm statistics) copied as they are
    (a stand-in until :func:`recompute_batch_stats` replaces them)."""
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm.detach().to(pe.dtype), 1.0 - decay)
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def recompute_batch_stats(model: nn.Module, inputs: Iterable[tuple[torch.Tensor, ...]],
                          forward: Callable[..., object] | None = None) -> int:
    """Reset the running statistics of every BatchNorm of ``model`` and re-estimate them as the plain average over
    the forward passes of ``inputs`` in train mode (``momentum=None``); the model is left in eval mode.

    Every random stream (torch, Python, NumPy) is left as it was, so a run that recomputes at a checkpoint still
    continues exactly as one that does not. Returns the number of batches used."""
    norms = batch_norms(model)
    if not norms:
        return 0
    momenta = [m.momentum for m in norms]
    py_state, np_state = random.getstate(), np.random.get_state()
    count = 0
    with torch.random.fork_rng(devices=[]):
        for m in norms:
            m.reset_running_stats()
            m.momentum = None
        model.train()
        try:
            for args in inputs:
                (forward or model)(*args)
                count += 1
        finally:
            for m, mom in zip(norms, momenta):
                m.momentum = mom
            model.eval()
            random.setstate(py_state)
            np.random.set_state(np_state)
    return count

"""Cost of a generator: multiply-accumulates (MACs) and parameters for one image, counted from the graph.

MACs are ``torch.utils.flop_counter`` FLOP / 2 for a batch-1 forward pass in eval mode (the graph that is
exported: the label stem as table lookups), run on the meta device, so counting a paper-size generator takes
no memory and no time. The README's GFLOP figures are the same count (FLOP = 2 MACs)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from train.config import GeneratorConfig


def module_macs(module: torch.nn.Module, image_size, noise_shape) -> int:
    """MACs of one batch-1 forward pass of any generator-shaped ``module`` (``module(label, noise)``; ours or a
    peer's) in eval mode, put back in the mode it was in. Runs on the module's device (the meta device costs
    nothing)."""
    h, w = (int(v) for v in image_size)
    device = next(module.parameters()).device
    was_training = module.training
    module.eval()
    counter = FlopCounterMode(display=False)
    try:
        with counter, torch.no_grad():
            module(torch.zeros(1, h, w, dtype=torch.int32, device=device),
                   torch.zeros(1, *noise_shape, device=device))
    finally:
        module.train(was_training)
    return int(counter.get_total_flops() // 2)


def generator_cost(num_classes: int, cfg: GeneratorConfig, image_size) -> tuple[int, int]:
    """(MACs, parameters) of the generator ``cfg`` for one ``image_size`` [H, W] image."""
    from train.models.generator import Generator

    with torch.device("meta"):
        g = Generator(num_classes, cfg)
    return module_macs(g, image_size, g.noise_shape), sum(p.numel() for p in g.parameters())

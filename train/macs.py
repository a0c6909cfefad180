"""Cost of a generator: multiply-accumulates (MACs) and parameters for one image, counted from the graph.

MACs are ``torch.utils.flop_counter`` FLOP / 2 for a batch-1 forward pass in eval mode (the graph that is
exported: the label stem as table lookups), run on the meta device, so counting a paper-size generator takes
no memory and no time. The README's GFLOP figures are the same count (FLOP = 2 MACs)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from train.config import GeneratorConfig


def generator_cost(num_classes: int, cfg: GeneratorConfig, image_size) -> tuple[int, int]:
    """(MACs, parameters) of the generator ``cfg`` for one ``image_size`` [H, W] image."""
    from train.models.generator import Generator

    h, w = (int(v) for v in image_size)
    with torch.device("meta"):
        g = Generator(num_classes, cfg).eval()
        counter = FlopCounterMode(display=False)
        with counter, torch.no_grad():
            g(torch.zeros(1, h, w, dtype=torch.int32), torch.zeros(1, *g.noise_shape))
    return int(counter.get_total_flops() // 2), sum(p.numel() for p in g.parameters())

"""Things the loop does with the EMA generator on held-out maps: sample grids and the label-consistency score."""

from __future__ import annotations

from pathlib import Path

import torch

from train.config import EvalConfig
from train.metrics import to_uint8_nhwc


def _val_batch(dataset, count: int) -> torch.Tensor:
    return torch.stack([dataset[i][1] for i in range(min(count, len(dataset)))])


@torch.no_grad()
def generate(G: torch.nn.Module, labels: torch.Tensor, seed: int, device: torch.device, batch: int = 16) -> torch.Tensor:
    """Images for ``labels`` with noise drawn from ``seed`` (one fixed stream, so the same seed = same images)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(labels.shape[0], *G.noise_shape, generator=g)
    out = [G(labels[i : i + batch].to(device), noise[i : i + batch].to(device)).float().cpu() for i in range(0, len(labels), batch)]
    return torch.cat(out)


@torch.no_grad()
def label_consistency_of_generator(G: torch.nn.Module, val_set, samples: int, device: torch.device, seed: int = 1234) -> float | None:
    """mIoU of the dataset's fixed classifier on generated images vs the input maps (synthetic data only)."""
    scenes = getattr(val_set, "scenes", None)
    if scenes is None:
        return None
    from train.metrics import label_consistency

    labels = _val_batch(val_set, samples)
    images = to_uint8_nhwc(generate(G, labels, seed, device))
    return float(label_consistency(images, labels.numpy(), scenes))


@torch.no_grad()
def write_sample_grid(G: torch.nn.Module, val_set, path: Path, cfg: EvalConfig, device: torch.device) -> Path:
    """PNG grid, one row per held-out map: colourised label | generated with each of cfg.sample_seeds."""
    from train.data.visualize import colorize, save_grid

    labels = _val_batch(val_set, cfg.sample_maps)
    columns = [to_uint8_nhwc(generate(G, labels, s, device)) for s in cfg.sample_seeds]
    rows = [[colorize(labels[i].numpy(), val_set.palette)] + [c[i] for c in columns] for i in range(len(labels))]
    save_grid(rows, path)
    return path

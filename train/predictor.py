"""A live generator behind the runtimes :class:`~runtimes.predictor.Predictor`: the way ``train`` runs a generator
outside the training step.

Sample grids, label consistency during training and ``python -m train.evaluate`` of a checkpoint all call
``predictor.generate(labels, seed=...)`` / ``generate_raw`` on a predictor built here, so they check label maps,
draw the noise of a seed (:mod:`runtimes.noise`) and convert images exactly as ``runtimes.load_predictor`` does for
an exported artifact: seed ``s`` of a map is the same image in a run's samples, its evaluation and every backend.
"""

from __future__ import annotations

import torch

from runtimes.backends.torch_backend import TorchModuleBackend
from runtimes.predictor import Predictor
from runtimes.spec import ClassInfo, Manifest, validate_dict
from train.checkpoint import GeneratorInfo

#: maps per forward pass of a live generator (the predictor splits larger batches)
DEFAULT_MAX_BATCH = 16

_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def generator_manifest(generator: torch.nn.Module, info: GeneratorInfo, max_batch: int = DEFAULT_MAX_BATCH) -> Manifest:
    """The manifest an export of ``generator`` would carry, as far as running it goes: classes and palette, input
    size, noise shape, batch range (target ``torch``; no files)."""
    param = next(iter(generator.parameters()), None)
    precision = _PRECISIONS.get(param.dtype if param is not None else torch.float32, "fp32")
    manifest = Manifest(
        target="torch", precision=precision, input_size=[int(v) for v in info.image_size],
        num_classes=int(info.num_classes),
        classes=[ClassInfo(id=i, name=str(name), color=[int(v) for v in color])
                 for i, (name, color) in enumerate(zip(info.class_names, info.palette))],
        noise_shape=[int(v) for v in generator.noise_shape], ignore_id=info.ignore_id,
        batch={"min": 1, "opt": 1, "max": int(max_batch)},
        trained_on={"dataset": info.dataset, "checkpoint": info.source},
    )
    validate_dict(manifest.to_dict())  # a GeneratorInfo that no artifact could describe fails here, not later
    return manifest


def generator_predictor(generator: torch.nn.Module, info: GeneratorInfo, max_batch: int = DEFAULT_MAX_BATCH) -> Predictor:
    """A :class:`Predictor` over ``generator`` itself (in memory, on its own device, in its current mode and
    weights; nothing is copied): ``predictor.generate(labels, seed=s)`` is what ``load_predictor`` of its export
    returns for the same maps and seed, within that target's precision."""
    manifest = generator_manifest(generator, info, max_batch)
    return Predictor(TorchModuleBackend(generator, manifest), manifest)

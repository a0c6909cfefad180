"""torch target: ``model.pt2``, a ``torch.export`` program at fp32, fp16 or bf16 (the reference backend and the
GPU path where TensorRT is absent). Inputs and output keep the contract's dtypes (int32 label, float32 noise and
image); fp16/bf16 programs cast inside. The batch dimension is dynamic within the request's (min, max).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from export.base import Converted, ExportRequest
from runtimes.targets import TARGETS

(MODEL,) = TARGETS["torch"].files
#: this target reads no -o option
OPTIONS: dict = {}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class CastGenerator(nn.Module):
    """The generator computing in ``dtype`` behind float32 inputs and output."""

    def __init__(self, generator: nn.Module, dtype: torch.dtype):
        super().__init__()
        self.generator = generator.to(dtype)
        self.dtype = dtype

    def forward(self, label: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.generator(label, noise.to(self.dtype)).float()


def convert(req: ExportRequest, keep_float: Sequence[str] = ()) -> Converted:
    """Write ``model.pt2`` (nothing is quantized: ``keep_float`` is unused)."""
    import copy

    dtype = DTYPES[req.precision]
    module = req.generator.eval() if dtype == torch.float32 else CastGenerator(copy.deepcopy(req.generator), dtype).eval()
    program = export_program(module, req.input_size, req.noise_shape, req.batch)
    torch.export.save(program, str(req.out_dir / MODEL))
    return Converted(target_options={"torch": torch.__version__})


def export_program(module: nn.Module, input_size, noise_shape, batch) -> torch.export.ExportedProgram:
    n = max(2, min(int(batch[1]), 4))
    label = torch.zeros(n, *input_size, dtype=torch.int32)
    noise = torch.zeros(n, *noise_shape)
    dim = torch.export.Dim("batch", min=max(1, int(batch[0])), max=max(int(batch[2]), n))
    with torch.no_grad():
        return torch.export.export(module, (label, noise), dynamic_shapes={"label": {0: dim}, "noise": {0: dim}})

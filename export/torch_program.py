"""torch target: ``model.pt2``, a ``torch.export`` program at fp32, fp16 or bf16 (the reference backend and the
GPU path where TensorRT is absent). Inputs and output keep the contract's dtypes (int32 label, float32 noise and
image); fp16/bf16 programs cast inside. The batch dimension is dynamic within the request's (min, max).
"""

from __future__ import annotations

import torch
from torch import nn

from calibration import compare_images, run_all, torch_runner
from dpsims.errors import ConfigError
from export.base import ExportRequest, ExportResult

MODEL = "model.pt2"
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


def export(req: ExportRequest) -> ExportResult:
    import copy

    if req.precision not in DTYPES:
        raise ConfigError(f"The torch target exports {', '.join(DTYPES)}, not {req.precision!r}.")
    dtype = DTYPES[req.precision]
    module = req.generator.eval() if dtype == torch.float32 else CastGenerator(copy.deepcopy(req.generator), dtype).eval()
    program = export_program(module, req.input_size, req.noise_shape, req.batch)
    torch.export.save(program, str(req.out_dir / MODEL))

    quality = None
    if req.calib is not None:
        held_out = req.calib.split()[1]
        reference = run_all(torch_runner(req.generator), held_out)
        loaded = torch.export.load(str(req.out_dir / MODEL)).module()
        quality = compare_images(reference, run_all(torch_runner(loaded), held_out), held_out)
        if req.precision == "fp32":
            quality = {"max_abs_error_vs_torch": quality["max_abs_error"]}
        quality["measured_with"] = "torch on the CPU"
    return ExportResult(files=[MODEL], quality=quality, target_options={"torch": torch.__version__})


def export_program(module: nn.Module, input_size, noise_shape, batch) -> torch.export.ExportedProgram:
    n = max(2, min(int(batch[1]), 4))
    label = torch.zeros(n, *input_size, dtype=torch.int32)
    noise = torch.zeros(n, *noise_shape)
    dim = torch.export.Dim("batch", min=max(1, int(batch[0])), max=max(int(batch[2]), n))
    with torch.no_grad():
        return torch.export.export(module, (label, noise), dynamic_shapes={"label": {0: dim}, "noise": {0: dim}})

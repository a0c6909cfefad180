"""Export a trained DP-SIMS generator to ONNX, OpenVINO, TensorRT, CoreML or torch.export artifacts."""

from dpsims._version import __version__

__all__ = ["__version__"]

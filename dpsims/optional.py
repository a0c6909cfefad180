"""Import optional libraries only when a backend opens, with an error that names the pip extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from dpsims.errors import BackendUnavailable


def require(module: str, extra: str, what: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`BackendUnavailable` saying ``pip install 'dp-sims[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as e:  # also covers sys.modules[module] = None in tests
        raise BackendUnavailable(
            f"{what or module} is not installed ({e}). Install it with: pip install 'dp-sims[{extra}]'"
        ) from None


#: top-level module -> the extra that installs it (for a clear message when a command's import fails)
EXTRA_OF = {
    "torch": "train", "torchvision": "train", "timm": "train", "safetensors": "train", "tqdm": "train",
    "yaml": "train", "PIL": "runtime", "onnx": "onnx", "onnxruntime": "onnx", "onnxscript": "onnx",
    "openvino": "openvino", "nncf": "openvino", "coremltools": "coreml", "tensorrt": "tensorrt",
    "modelopt": "tensorrt", "torchmetrics": "eval", "scipy": "eval", "torch_fidelity": "eval",
    "fastapi": "web", "uvicorn": "web", "multipart": "web", "python_multipart": "web", "psutil": "dev",
}


def missing_module_message(error: ImportError, command: str) -> str | None:
    """One line naming the extra to install when ``error`` is a missing third-party module; None otherwise (a bug
    or a module of this package: let it surface as it is)."""
    name = (getattr(error, "name", None) or "").split(".")[0]
    extra = EXTRA_OF.get(name)
    if extra is None:
        return None
    return f"{command} needs {name}, which is not installed. Install it with: pip install 'dp-sims[{extra}]'"

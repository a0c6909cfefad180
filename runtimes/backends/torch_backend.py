"""torch backends: ``model.pt2`` (a ``torch.export`` program) on the CPU or a CUDA GPU, and a live module in memory.

:class:`TorchBackend` is the reference backend of torch artifacts, and the GPU path where TensorRT is absent. A .pt2
archive may carry pickled payloads (tensor subclasses, opaque objects, legacy weight files) that
``torch.export.load`` would unpickle; this backend refuses such archives before loading, so opening an artifact
never runs code from it.

:class:`TorchModuleBackend` runs a generator module that lives in this process (no artifact folder): it is how
``train`` runs a generator outside the training step (sample grids, label consistency, evaluation of a checkpoint)
behind the same :class:`runtimes.predictor.Predictor` as every artifact, so those paths validate maps, draw noise
and convert images exactly as ``load_predictor`` does (``train.predictor.generator_predictor`` builds one).
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from dpsims.errors import BackendUnavailable, InputError, ManifestError
from dpsims.optional import require
from runtimes.backends.base import Backend
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE, Manifest


def check_no_pickles(data: bytes, path: Path, torch: Any) -> None:
    """Raise ManifestError unless every payload of the .pt2 archive ``data`` loads without unpickling code."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
    except zipfile.BadZipFile:
        raise ManifestError(f"{path} is not a torch.export archive (not a zip file). Export it again.") from None

    def refuse(why: str) -> ManifestError:
        return ManifestError(f"{path} holds {why}, which loading would unpickle; dp-sims refuses it. Export it again.")

    with archive:
        for name in archive.namelist():
            inner = name.split("/", 1)[-1]  # entries live under one root folder
            if inner.endswith(("_weights_config.json", "_constants_config.json")):
                for fqn, meta in json.loads(archive.read(name)).get("config", {}).items():
                    if meta.get("use_pickle") or meta.get("path_name", "").startswith(("custom_obj_", "opaque_obj_")):
                        raise refuse(f"a pickled payload ({fqn})")
            elif inner.startswith(("data/weights/", "data/constants/")) and inner.endswith(".pt"):
                raise refuse(f"a legacy pickled weight file ({inner})")
            elif inner.startswith("data/sample_inputs/"):
                try:  # torch.export.load falls back to a full unpickle when this fails
                    torch.load(io.BytesIO(archive.read(name)), weights_only=True)
                except Exception:
                    raise refuse(f"sample inputs that are not plain tensors ({inner})") from None


def torch_device(torch: Any, device: str) -> Any:
    """"auto" -> cuda when available, else cpu; "cpu", "cuda", "cuda:N" are checked against this machine."""
    if device.lower() == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device.lower())
    except RuntimeError:
        raise InputError(f"The torch backend runs on 'auto', 'cpu' or 'cuda[:N]', not {device!r}.") from None
    if dev.type == "cuda" and (not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()):
        raise BackendUnavailable(f"device {device!r}: torch {torch.__version__} sees no such CUDA GPU here; use device='cpu'.")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"The torch backend runs on 'auto', 'cpu' or 'cuda[:N]', not {device!r}.")
    return dev


class TorchBackend(Backend):
    extra = "train"
    accepted_options = frozenset()

    def __init__(self, artifact_dir: Path, manifest: Manifest, device: str = "auto", **options: Any):
        super().__init__(artifact_dir, manifest, device, **options)
        torch = require("torch", self.extra)
        self._torch = torch
        self.torch_device = torch_device(torch, device)
        path = self.file_path("model.pt2")
        data = path.read_bytes()  # checked and loaded from the same bytes
        check_no_pickles(data, path, torch)
        try:
            program = torch.export.load(io.BytesIO(data))
        except Exception as e:  # torch raises many types for a bad archive
            raise ManifestError(f"torch {torch.__version__} cannot load {path}: {e}. Export it again.") from None
        names = list(program.graph_signature.user_inputs)
        if len(names) != 2:
            raise ManifestError(f"{path} takes {len(names)} inputs; the graph contract wants ({INPUT_LABEL}, {INPUT_NOISE}).")
        if self.torch_device.type != "cpu":
            from torch.export.passes import move_to_device_pass

            program = move_to_device_pass(program, self.torch_device)
        placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
        # the dtypes the program was exported with (e.g. float16 noise for an fp16 artifact)
        self._dtypes = [placeholders[n].meta["val"].dtype for n in names]
        self.module = program.module()

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._torch.inference_mode():
            return run_module(self._torch, self.module, self.torch_device, self._dtypes, inputs)

    def close(self) -> None:
        self.module = None
        if self.torch_device.type == "cuda":
            self._torch.cuda.empty_cache()

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "library": f"torch {self._torch.__version__}", "torch_device": str(self.torch_device)}


def run_module(torch: Any, module: Any, device: Any, dtypes: list[Any], inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The graph contract through a torch callable: ``label`` and ``noise`` to ``device`` in ``dtypes``, the image
    back as float32 numpy."""
    args = [torch.from_numpy(inputs[name]).to(device, dtype) for name, dtype in zip((INPUT_LABEL, INPUT_NOISE), dtypes)]
    return {OUTPUT_IMAGE: module(*args).float().cpu().numpy()}


class TorchModuleBackend(Backend):
    """A torch generator module held in memory, behind the backend interface (no artifact folder, no copy).

    The module is used as it is, never copied or put in another mode: its current weights, on its own device (the
    first parameter's), noise cast to its parameters' dtype; so an EMA generator that training keeps updating is
    sampled with its weights of the moment. ``manifest`` describes it as an artifact's would (classes, palette,
    input size, noise shape, batch range)."""

    extra = "train"
    accepted_options = frozenset()

    def __init__(self, module: Any, manifest: Manifest):
        # no Backend.__init__: there is no artifact folder to name
        self.artifact_dir = None
        self.manifest = manifest
        self.options = {}
        torch = require("torch", self.extra)
        self._torch = torch
        param = next(iter(module.parameters()), None)
        self.torch_device = param.device if param is not None else torch.device("cpu")
        self.device = str(self.torch_device)
        self._dtypes = [torch.int32, param.dtype if param is not None else torch.float32]
        self.module = module

    def infer(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        with self._torch.no_grad():  # not inference_mode: the module's tensors stay usable for training
            return run_module(self._torch, self.module, self.torch_device, self._dtypes, inputs)

    def close(self) -> None:
        self.module = None  # the caller's module itself lives on

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "library": f"torch {self._torch.__version__}", "torch_device": str(self.torch_device),
                "module": "in memory"}

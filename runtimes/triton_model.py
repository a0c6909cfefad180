"""The Triton Python-backend model that ``python -m runtimes serve`` runs (:mod:`runtimes.serve`).

Triton's Python backend starts a stub process that imports the model repository's ``1/model.py``; that file
(written by :mod:`runtimes.serve`) puts the serving interpreter's ``sys.path`` in front and imports
:class:`TritonPythonModel` from here. The artifact's predictor lives in the stub: each dynamic batch is checked
request by request, the good requests run through the predictor's backend together, and every request gets its
own response: a request with bad class ids, NaN noise or a wrong shape gets an error response
(``InferenceResponse(error=...)``) and the other requests of its batch are answered as if it had not been there.

NumPy 2: the Python backend stub of Triton 2.51 (the nvidia-pytriton 0.7 wheel) is built with a pybind11 that
reads NumPy 1's dtype layout, so ``pb_utils.Tensor(name, array)`` of a NumPy 2 array carries 0 bytes (the client
gets "output tensor shape does not match size of output"; measured). Under NumPy 2 the tensors go through
DLPack instead (``np.from_dlpack`` in, ``pb_utils.Tensor.from_dlpack`` out), which reads no dtype struct; the
stub renames the consumed capsule to one NumPy's capsule destructor does not expect, which only prints an
"ignored" ValueError: that one message is filtered out of ``sys.unraisablehook``.

Only ``triton_python_backend_utils`` (the stub's module) is needed beyond the package; it is passed in, so the
batch logic is tested without a server.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

from dpsims.errors import DpSimsError, InputError
from runtimes.spec import INPUT_LABEL, INPUT_NOISE, OUTPUT_IMAGE

ARTIFACT_PARAMETER = "dp_sims_artifact"
OPTIONS_PARAMETER = "dp_sims_options"
NUMPY2 = int(np.__version__.split(".")[0]) >= 2


def to_numpy(tensor: Any) -> np.ndarray:
    """A request's input tensor as a NumPy array (a copy: the stub's shared memory is reused after execute)."""
    array = np.from_dlpack(tensor) if NUMPY2 else tensor.as_numpy()
    return np.array(array, copy=True)


def to_tensor(pb_utils: Any, name: str, array: np.ndarray) -> Any:
    array = np.ascontiguousarray(array)
    return pb_utils.Tensor.from_dlpack(name, array) if NUMPY2 else pb_utils.Tensor(name, array)


def check_request(predictor: Any, label: np.ndarray, noise: np.ndarray) -> None:
    """What the local predictor checks of one request's maps and noise (dtype and shapes are Triton's checks)."""
    from runtimes.predictor import check_class_ids

    if label.ndim != 3 or len(label) == 0:
        raise InputError(f"The {INPUT_LABEL!r} input has shape {list(label.shape)}; it holds 1 or more maps [N, H, W].")
    check_class_ids(label, predictor.num_classes, predictor.ignore_id, what=f"The {INPUT_LABEL!r} input")
    if label.shape[1:] != tuple(predictor.input_size):
        raise InputError(f"The {INPUT_LABEL!r} input has shape {list(label.shape)}; the model takes [N, "
                         f"{', '.join(map(str, predictor.input_size))}].")
    if noise.shape != (len(label), *predictor.noise_shape):
        raise InputError(f"The {INPUT_NOISE!r} input has shape {list(noise.shape)}; the model takes "
                         f"[{len(label)}, {', '.join(map(str, predictor.noise_shape))}] for {len(label)} maps.")
    if not np.isfinite(noise).all():
        raise InputError(f"The {INPUT_NOISE!r} input holds NaN or infinite values.")


def execute(predictor: Any, requests: Sequence[Any], pb_utils: Any) -> list[Any]:
    """One response per request, in order; a bad request gets its own error and does not touch the others."""
    responses: list[Any] = [None] * len(requests)
    good: list[tuple[int, np.ndarray, np.ndarray]] = []
    for i, request in enumerate(requests):
        try:
            label = to_numpy(pb_utils.get_input_tensor_by_name(request, INPUT_LABEL)).astype(np.int32, copy=False)
            noise = to_numpy(pb_utils.get_input_tensor_by_name(request, INPUT_NOISE)).astype(np.float32, copy=False)
            check_request(predictor, label, noise)
            good.append((i, label, noise))
        except DpSimsError as e:
            responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))
    if good:
        try:
            images = predictor.generate_raw(np.concatenate([g[1] for g in good]), noise=np.concatenate([g[2] for g in good]))
        except Exception as e:  # the backend itself failed: every request of this run gets the error
            for i, _, _ in good:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"{type(e).__name__}: {e}"))
        else:
            start = 0
            for i, label, _ in good:
                part = images[start:start + len(label)]
                start += len(label)
                responses[i] = pb_utils.InferenceResponse(output_tensors=[to_tensor(pb_utils, OUTPUT_IMAGE, part)])
    return responses


def _quiet_consumed_capsules(hook: Any) -> Any:
    """``sys.unraisablehook`` without the one message NumPy's DLPack capsule destructor prints for a capsule the
    stub consumed and renamed (module doc); everything else still goes to ``hook``."""

    def unraisable(info: Any) -> None:
        if (isinstance(info.exc_value, ValueError) and "PyCapsule_GetPointer called with incorrect name" in str(info.exc_value)
                and type(info.object).__name__ == "PyCapsule"):
            return
        hook(info)

    return unraisable


class TritonPythonModel:
    """Triton's Python-backend model interface (initialize / execute / finalize)."""

    def initialize(self, args: dict[str, str]) -> None:
        from runtimes.loader import load_predictor

        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in (config.get("parameters") or {}).items()}
        options = json.loads(params.get(OPTIONS_PARAMETER) or "{}")
        self.predictor = load_predictor(params[ARTIFACT_PARAMETER], device=options.pop("device", "auto"), **options)
        if NUMPY2:
            sys.unraisablehook = _quiet_consumed_capsules(sys.unraisablehook)

    def execute(self, requests: Sequence[Any]) -> list[Any]:
        import triton_python_backend_utils as pb_utils  # the stub's module; exists only inside Triton

        return execute(self.predictor, requests, pb_utils)

    def finalize(self) -> None:
        self.predictor.close()

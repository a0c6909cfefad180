"""``python -m export --target triton``: the model repository's config.pbtxt parses with Triton's own protobuf
(tritonclient ships model_config.proto) and states the tensors of the artifact's ONNX graph."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from runtime_artifacts import build_artifact, random_label_map, tiny_classes, tiny_generator

from runtimes import InputError, load_predictor, read_manifest

pytest.importorskip("tritonclient.grpc", reason="needs the serve extra: pip install 'dp-sims[serve]'")
onnx = pytest.importorskip("onnx")
from google.protobuf import json_format, text_format  # noqa: E402  (protobuf comes with tritonclient[grpc])
from tritonclient.grpc import model_config_pb2  # noqa: E402

from export.__main__ import main as export_main  # noqa: E402
from export.triton import MANIFEST_PARAMETER, config_pbtxt, export_repository, trtexec_command  # noqa: E402
from runtimes.remote import manifest_from_config  # noqa: E402

ONNX_TYPES = {onnx.TensorProto.INT32: model_config_pb2.TYPE_INT32, onnx.TensorProto.FLOAT: model_config_pb2.TYPE_FP32}


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("triton_artifacts")
    generator, classes = tiny_generator(), tiny_classes()
    paths = {"onnx": build_artifact(root, "onnx", generator, classes)}
    paths["openvino"] = build_artifact(root, "openvino", generator, classes, onnx_path=paths["onnx"] / "model.onnx")
    return paths


def parse(path: Path) -> model_config_pb2.ModelConfig:
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def parse_text_of(tensors) -> model_config_pb2.ModelConfig:
    """A config holding ``tensors`` without their leading -1 (for comparing with the graph's batch-less dims)."""
    config = model_config_pb2.ModelConfig()
    for t in tensors:
        group = config.input if t.name != "image" else config.output
        group.add(name=t.name, data_type=t.data_type, dims=list(t.dims)[1:])
    return config


def onnx_io(path: Path) -> dict[str, tuple[int, list]]:
    graph = onnx.load(str(path), load_external_data=False).graph
    return {v.name: (v.type.tensor_type.elem_type, [d.dim_value if d.HasField("dim_value") else d.dim_param
                                                      for d in v.type.tensor_type.shape.dim])
            for v in [*graph.input, *graph.output]}


def assert_matches_onnx(config: model_config_pb2.ModelConfig, onnx_path: Path) -> None:
    """Names, dtypes and (batch-less) dims of the config's tensors are the ONNX graph's; an output dim the graph
    leaves symbolic is checked by running the graph on a batch of 2."""
    graph = onnx_io(onnx_path)
    tensors = [*config.input, *config.output]
    if config.max_batch_size == 0:  # the model's own batch dimension (openvino): -1, then the graph's dims
        assert all(t.dims[0] == -1 for t in tensors)
        config = model_config_pb2.ModelConfig()
        config.CopyFrom(parse_text_of(tensors))
        tensors = [*config.input, *config.output]
    assert sorted(t.name for t in tensors) == sorted(graph) == ["image", "label", "noise"]
    for t in tensors:
        elem, dims = graph[t.name]
        assert t.data_type == ONNX_TYPES[elem], t.name
        assert isinstance(dims[0], str), f"{t.name}: the ONNX batch dimension must be dynamic"
        assert len(t.dims) == len(dims) - 1, t.name
        for have, want in zip(t.dims, dims[1:]):  # Triton's dims leave out the batch dimension
            assert want == have or (isinstance(want, str) and t in config.output), (t.name, list(t.dims), dims)
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    feeds = {t.name: np.zeros((2, *t.dims), np.int32 if t.data_type == model_config_pb2.TYPE_INT32 else np.float32)
             for t in config.input}
    (image,) = session.run([config.output[0].name], feeds)
    assert image.shape == (2, *config.output[0].dims) and image.dtype == np.float32


@pytest.mark.parametrize("target", ["onnx", "openvino"])
def test_repository_config_parses_and_matches_the_onnx_graph(artifacts, tmp_path, target):
    result = export_repository(artifacts[target], tmp_path / "repo", {"name": "tiny"})
    model_dir = tmp_path / "repo" / "tiny"
    assert result.model_dir == model_dir
    config = parse(model_dir / "config.pbtxt")
    manifest = read_manifest(artifacts[target])
    assert config.name == "tiny"
    if target == "onnx":
        assert (config.platform, config.backend, config.default_model_filename) == ("onnxruntime_onnx", "onnxruntime", "model.onnx")
    else:
        assert (config.platform, config.backend, config.default_model_filename) == ("", "openvino", "model.xml")
    if target == "onnx":
        assert config.max_batch_size == manifest.batch["max"] == 4
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds > 0
        assert list(config.dynamic_batching.preferred_batch_size) == [4]
    else:  # the openvino backend fixes the batch at max_batch_size > 0: no Triton batching, a dynamic batch dim
        assert config.max_batch_size == 0 and not config.HasField("dynamic_batching")
        assert all(t.dims[0] == -1 for t in [*config.input, *config.output])
    assert config.parameters["dp_sims_triton_release"].string_value == "24.10"
    assert [w.batch_size for w in config.model_warmup] == [1, 1] if target == "openvino" else [1, 4]
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_CPU, 1)]
    # the tensors against the ONNX graph the artifact came from (the OpenVINO IR was converted from it)
    assert_matches_onnx(config, artifacts["onnx"] / "model.onnx")
    # the manifest travels in the config (what clients read) and as 1/model.json; 1/ is a complete artifact
    from_config = manifest_from_config(json_format.MessageToDict(config, preserving_proto_field_name=True), "repo")
    assert from_config.to_dict() == manifest.to_dict()
    assert json.loads(config.parameters[MANIFEST_PARAMETER].string_value) == manifest.to_dict()
    for entry in manifest.files:
        assert (model_dir / "1" / entry.path).read_bytes() == (artifacts[target] / entry.path).read_bytes()
    labels = random_label_map(np.random.default_rng(0), 3)
    with load_predictor(model_dir / "1") as copy, load_predictor(artifacts[target]) as original:
        assert np.array_equal(copy.generate(labels, seed=5), original.generate(labels, seed=5))


def test_openvino_ir_shapes_match_the_config(artifacts, tmp_path):
    ov = pytest.importorskip("openvino")
    export_repository(artifacts["openvino"], tmp_path / "repo", {"name": "m"})
    config = parse(tmp_path / "repo" / "m" / "config.pbtxt")
    model = ov.Core().read_model(str(tmp_path / "repo" / "m" / "1" / "model.xml"))
    shapes = {p.get_any_name(): p.get_partial_shape() for p in [*model.inputs, *model.outputs]}
    for t in [*config.input, *config.output]:
        shape = shapes[t.name]
        assert t.dims[0] == -1 and shape[0].is_dynamic and [d.get_length() for d in list(shape)[1:]] == list(t.dims)[1:]


def test_cli_writes_the_repository_with_options(artifacts, tmp_path, capsys):
    repo = tmp_path / "repo"
    code = export_main(["--target", "triton", "--from", str(artifacts["onnx"]), "--out", str(repo),
                        "-o", "name=ade", "-o", "kind=gpu", "-o", "instances=2", "-o", "max_queue_delay_us=500"])
    assert code == 0, capsys.readouterr().err
    config = parse(repo / "ade" / "config.pbtxt")
    assert [(g.kind, g.count) for g in config.instance_group] == [(model_config_pb2.ModelInstanceGroup.KIND_GPU, 2)]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert "model repository" in capsys.readouterr().out
    # a second model beside it; the first is kept. The same name again needs --overwrite
    assert export_main(["--target", "triton", "--from", str(artifacts["openvino"]), "--out", str(repo)]) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["ade", "openvino"]
    assert export_main(["--target", "triton", "--from", str(artifacts["onnx"]), "--out", str(repo), "-o", "name=ade"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert export_main(["--target", "triton", "--from", str(artifacts["onnx"]), "--out", str(repo), "-o", "name=ade",
                        "--overwrite", "-o", "kind=cpu"]) == 0
    assert parse(repo / "ade" / "config.pbtxt").instance_group[0].kind == model_config_pb2.ModelInstanceGroup.KIND_CPU


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "kind=gpu"], "runs instances of kind cpu"),  # the openvino backend is CPU only
        (["-o", "colour=red"], "takes -o name"),
        (["-o", "instances=0"], "instances must be an integer >= 1"),
        (["-o", "name=bad/name"], "A model name holds"),
        (["-o", "max_queue_size=4"], "need Triton's dynamic batcher"),
        (["-o", "performance_hint=FAST"], "performance_hint is one of"),
        (["-o", "triton_release=23.01"], "-o backend_version=X"),
        (["-o", "warmup=2"], "warmup is true or false"),
    ],
)
def test_cli_refuses_bad_options(artifacts, tmp_path, capsys, args, message):
    code = export_main(["--target", "triton", "--from", str(artifacts["openvino"]), "--out", str(tmp_path / "r"), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_cli_needs_from_and_out(artifacts, tmp_path, capsys):
    assert export_main(["--target", "triton", "--out", str(tmp_path / "r")]) == 2
    assert "--from ARTIFACT_DIR and --out REPO" in capsys.readouterr().err
    assert export_main(["--target", "triton", "--from", str(tmp_path / "nothing"), "--out", str(tmp_path / "r")]) == 2
    assert "No model.json" in capsys.readouterr().err


def test_targets_without_a_triton_backend_are_refused(artifacts):
    manifest = read_manifest(artifacts["onnx"])
    for target in ("torch", "coreml"):
        with pytest.raises(InputError, match="python -m runtimes serve"):
            config_pbtxt(dataclasses.replace(manifest, target=target), "m")


def test_tensorrt_artifact_gets_a_plan_config_and_the_build_command(artifacts):
    manifest = dataclasses.replace(read_manifest(artifacts["onnx"]), target="tensorrt", precision="int8",
                                   batch={"min": 1, "opt": 2, "max": 8})
    config = text_format.Parse(config_pbtxt(manifest, "m", kind="gpu"), model_config_pb2.ModelConfig())
    assert (config.platform, config.default_model_filename, config.max_batch_size) == ("tensorrt_plan", "model.plan", 8)
    assert list(config.dynamic_batching.preferred_batch_size) == [2, 8]
    assert_matches_onnx(config, artifacts["onnx"] / "model.onnx")
    command = trtexec_command(manifest, "1/model.onnx", "1/model.plan")
    assert "--minShapes=label:1x32x32,noise:1x4x8" in command and "--maxShapes=label:8x32x32,noise:8x4x8" in command
    assert "--int8" in command
    with pytest.raises(InputError, match="kind gpu"):
        config_pbtxt(manifest, "m", kind="cpu")


def test_production_options_reach_the_configuration(artifacts, tmp_path):
    export_repository(artifacts["onnx"], tmp_path / "r", {"name": "o", "instances": 3, "max_queue_size": 16,
                                                          "queue_timeout_us": 500000, "threads": 2, "warmup": False})
    config = parse(tmp_path / "r" / "o" / "config.pbtxt")
    policy = config.dynamic_batching.default_queue_policy
    assert (policy.max_queue_size, policy.default_timeout_microseconds) == (16, 500000)
    assert policy.timeout_action == model_config_pb2.ModelQueuePolicy.REJECT
    assert config.instance_group[0].count == 3 and not config.model_warmup
    assert config.parameters["intra_op_thread_count"].string_value == "2"
    export_repository(artifacts["openvino"], tmp_path / "r", {"name": "v", "streams": 2, "threads": 4,
                                                              "performance_hint": "throughput"})
    params = parse(tmp_path / "r" / "v" / "config.pbtxt").parameters
    assert {k: params[k].string_value for k in ("NUM_STREAMS", "INFERENCE_NUM_THREADS", "PERFORMANCE_HINT")} == \
        {"NUM_STREAMS": "2", "INFERENCE_NUM_THREADS": "4", "PERFORMANCE_HINT": "THROUGHPUT"}
    with pytest.raises(InputError, match="openvino settings"):
        export_repository(artifacts["onnx"], tmp_path / "r", {"name": "x", "streams": 2})


def test_an_artifact_newer_than_the_releases_backend_is_refused_with_the_fixes(artifacts, tmp_path):
    from export.triton import check_runtime_version

    manifest = read_manifest(artifacts["onnx"])
    newer = dataclasses.replace(manifest, library_versions={"onnxruntime": "1.32.0"})
    with pytest.raises(InputError) as error:
        check_runtime_version(newer, "24.10")
    assert "onnxruntime 1.32.0" in str(error.value) and "1.19.2" in str(error.value)
    assert "onnxruntime==1.19.2" in str(error.value) and "-o backend_version=1.32.0" in str(error.value)
    assert check_runtime_version(newer, "24.10", backend_version="1.32.0") is None  # a backend built for it
    older = dataclasses.replace(manifest, library_versions={"onnxruntime": "1.19.0"})
    assert check_runtime_version(older, "24.10") is None
    unknown = dataclasses.replace(manifest, library_versions={})
    assert "not checked" in check_runtime_version(unknown, "24.10")
    ov = dataclasses.replace(read_manifest(artifacts["openvino"]), library_versions={"openvino": "2026.4.1"})
    with pytest.raises(InputError, match="openvino==2024.4.0"):
        check_runtime_version(ov, "24.10")


def test_the_refusal_names_the_first_release_whose_backend_is_new_enough(artifacts):
    from export.triton import check_runtime_version

    manifest = read_manifest(artifacts["onnx"])
    with pytest.raises(InputError, match=r"Triton 25\.05 or later \(-o triton_release=25\.05\)"):
        check_runtime_version(dataclasses.replace(manifest, library_versions={"onnxruntime": "1.22.0"}), "24.10")
    assert check_runtime_version(dataclasses.replace(manifest, library_versions={"onnxruntime": "1.22.0"}), "25.05") is None
    with pytest.raises(InputError, match=r"no Triton release known here ships onnxruntime 9\.1\.0 \(the newest"):
        check_runtime_version(dataclasses.replace(manifest, library_versions={"onnxruntime": "9.1.0"}), "24.10")

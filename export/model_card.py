"""``MODEL_CARD.md``: the human-readable side of an artifact, written by export beside ``model.json``.

It says what the model is, what it is for, what it was trained on and under which terms that data comes (a model
inherits the terms of its training data: a Cityscapes-trained artifact is for non-commercial use only), where it
falls short, how close the exported model stays to the float one, and how to run it. Its facts come from the
manifest (target, precision, size, classes, the export's quality report and calibration), the training run's
``config.yaml`` and ``metrics.jsonl`` when the checkpoint sits in a run folder, and the checkpoint itself.

The card is not listed in the manifest's files (no sha256): editing it does not invalidate the artifact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from runtimes._version import __version__
from runtimes.spec import Manifest

CARD_NAME = "MODEL_CARD.md"

#: dataset -> (what it is, the terms a model trained on it inherits)
DATA_TERMS: dict[str, tuple[str, str]] = {
    "synthetic": (
        "dp-sims' built-in synthetic scenes (`train/data/synthetic.py`): procedural layouts of coloured, textured "
        "regions generated from a seed. No photographs and no third-party data.",
        "Generated procedurally by dp-sims: the training data places no licence constraints on this model (the "
        "code is under dp-sims' Apache-2.0 licence).",
    ),
    "cityscapes": (
        "Cityscapes (Cordts et al., CVPR 2016): street scenes recorded in German, French and Swiss cities, "
        "`gtFine` labelIds (35 classes).",
        "**Non-commercial use only.** Cityscapes is made available for non-commercial purposes (academic "
        "research, teaching, scientific publications, personal experimentation) under the terms of use at "
        "https://www.cityscapes-dataset.com/license/. A model trained on it inherits these terms: do not use "
        "this artifact, or images made with it, commercially without a licence from the Cityscapes team.",
    ),
    "ade20k": (
        "ADE20K SceneParsing (ADEChallengeData2016, MIT CSAIL; Zhou et al., CVPR 2017): 20,210 training images "
        "of indoor and outdoor scenes, 150 classes plus 'other'.",
        "ADE20K's own terms apply (https://groups.csail.mit.edu/vision/datasets/ADE20K/): the SceneParsing "
        "annotations are released under the BSD 3-Clause licence; the images come from the SUN and Places "
        "databases and remain under their owners' copyright. Check these terms before any commercial use or "
        "redistribution of this model or its images.",
    ),
    "coco-stuff": (
        "COCO-Stuff (Caesar et al., CVPR 2018): COCO 2017 images with 91 thing and 91 stuff classes plus "
        "'unlabeled'.",
        "COCO-Stuff's own terms apply: its annotations are under Creative Commons Attribution 4.0 (attribution "
        "required); the COCO images are Flickr photos under their owners' licences (several of them "
        "non-commercial) and the Flickr terms of use (https://cocodataset.org/#termsofuse). Check these terms "
        "before any commercial use of this model or its images.",
    ),
    "folder": (
        "A user-provided dataset folder (images/, labels/ and a classes file).",
        "The terms of that dataset apply and are not known to dp-sims: the model inherits whatever licence its "
        "images and labels carry. State them here before sharing this artifact.",
    ),
}

#: target -> the pip extra of its runtime
RUNTIME_EXTRA = {"onnx": "onnx", "openvino": "openvino", "tensorrt": "tensorrt", "coreml": "coreml",
                 "torch": "train"}


def read_run(run_config: Path | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """The run's resolved config (``config.yaml``) and its last ``metrics.jsonl`` record that holds a label
    consistency, when the checkpoint came from a run folder; ({}, None) otherwise. Unreadable files count as
    absent: the card is documentation, never a reason for an export to fail."""
    if run_config is None:
        return {}, None
    import yaml

    try:
        config = yaml.safe_load(Path(run_config).read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        config = {}
    evaluated = None
    try:
        for line in (Path(run_config).parent / "metrics.jsonl").read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict) and record.get("label_consistency") is not None:
                evaluated = record
    except OSError:
        pass
    return (config if isinstance(config, dict) else {}), evaluated


def model_card(manifest: Manifest, *, run_name: str, run_config: dict[str, Any] | None = None,
               last_eval: dict[str, Any] | None = None, parameters: int | None = None) -> str:
    """The text of ``MODEL_CARD.md`` for ``manifest``.

    Long by design: it is the card's template, section after section, read top to bottom like the card it writes."""
    run_config = run_config or {}
    trained = manifest.trained_on or {}
    dataset = str(trained.get("dataset") or (run_config.get("data") or {}).get("dataset") or "unknown")
    h, w = manifest.input_size
    title = f"{run_name}: {manifest.target} {manifest.precision}, {h}x{w}"
    lines = [f"# Model card: {title}", "",
             f"Written by dp-sims {__version__} (`python -m export`) from the training run's config and the "
             "export's manifest (`model.json`, the machine-readable source of every number here).", ""]

    lines += ["## Model", ""]
    lines += [
        "- **What it does**: semantic image synthesis. It turns a label map (one class id per pixel) and a noise "
        "vector into an RGB image that follows the map; other noise gives other images of the same layout.",
        "- **Architecture**: the generator of DP-SIMS (*Unlocking Pre-trained Image Backbones for Semantic Image "
        "Synthesis*, CVPR 2024) as implemented by dp-sims: a label encoder with self-attention and noise "
        "cross-attention (context modeling), and a SPADE-modulated image branch."
        + (f" {parameters / 1e6:.2f} M parameters." if parameters else ""),
    ]
    gen = (run_config.get("model") or {}).get("generator") or {}
    if gen:
        keys = ("base_channels", "channel_mults", "attn_levels", "context_levels", "noise_tokens", "noise_dim",
                "stem_kernel", "spade_kernel")
        lines.append("- **Generator config**: " + ", ".join(f"`{k}={json.dumps(gen[k])}`" for k in keys if k in gen) + ".")
    lines += [
        f"- **This artifact**: target `{manifest.target}`, precision `{manifest.precision}`, input `label` int32 "
        f"[N, {h}, {w}] and `noise` float32 [N, {', '.join(map(str, manifest.noise_shape))}], output `image` "
        f"float32 [N, 3, {h}, {w}] in [-1, 1]; batch {manifest.batch['min']}..{manifest.batch['max']}; "
        f"{manifest.num_classes} classes (listed at the end); files: "
        + ", ".join(f"`{f.path}`" for f in manifest.files) + ".",
        f"- **Training**: run `{run_name}`"
        + (f" (config `{run_config['name']}`)" if run_config.get("name") and run_config["name"] != run_name else "")
        + f", {trained.get('step', '?')} steps, dataset `{dataset}` at "
        f"{'x'.join(map(str, trained.get('image_size') or manifest.input_size))}, weights of the EMA generator "
        f"(`{trained.get('checkpoint', '?')}`).",
    ]
    disc = (run_config.get("model") or {}).get("discriminator") or {}
    if disc.get("backbone"):
        init = "ImageNet-pretrained" if disc.get("pretrained") or disc.get("weights") else "randomly initialised"
        lines.append(f"- **Discriminator** (used in training only, not part of this artifact): a U-Net on the "
                     f"{init} `{disc['backbone']}` backbone.")
    lines.append("")

    lines += ["## Intended use", ""]
    if dataset == "synthetic":
        lines += ["A demonstration and test model: it shows the training, export and runtime path end to end on "
                  "the CPU. It draws the textures of dp-sims' synthetic scenes, not photographs; it is not meant "
                  "for any other use.", ""]
    else:
        lines += [
            f"Generating images of {dataset} scenes from label maps in its class list: content creation and "
            "editing tools (paint a layout, get an image), research on semantic image synthesis, and data "
            "augmentation experiments whose results are validated on real data.",
            "",
            "Out of scope: presenting generated images as real photographs; deriving facts about real places or "
            "people from them; using them as the only training or test data of a safety-critical system (e.g. "
            "the perception of a vehicle); label maps drawn in another dataset's class list.",
            "",
        ]

    what, terms = DATA_TERMS.get(dataset, (f"`{dataset}`.", "Unknown to dp-sims: check the data's terms."))
    lines += ["## Training data and its licence", "", f"- **Data**: {what}", f"- **Terms**: {terms}"]
    root = (run_config.get("data") or {}).get("root")
    if root:
        lines.append(f"- **Read from**: `{root}` on the training machine.")
    lines += ["", "## Limits", ""]
    lines += [
        f"- Fixed size: label maps must be {h}x{w} (`--resize` / `resize=True` scales others, nearest "
        "neighbour, and the images come out at that size).",
        f"- Only the {manifest.num_classes} classes below; other ids are refused"
        + (f" (id {manifest.ignore_id} is the dataset's ignore/unlabeled class)." if manifest.ignore_id is not None else "."),
        "- A GAN reproduces the content and the biases of its training data; small or rare classes and thin "
        "structures come out worse than large regions, and images can show artefacts.",
        "- The quality numbers below measure how far this export drifts from the float model, not how realistic "
        "the images are: FID, KID and mIoU against real images come from `python -m train.evaluate`.",
    ]
    if manifest.precision not in ("fp32",):
        lines.append(f"- Reduced precision ({manifest.precision}): the images differ slightly from the FP32 "
                     "model's; the same seed gives the same image on every backend only within that precision.")
    if dataset == "synthetic" or (isinstance(trained.get("step"), int) and trained["step"] < 10_000):
        lines.append(f"- A short run ({trained.get('step', '?')} steps): a demonstration, far from the quality of "
                     "a model trained for the paper's schedule.")
    lines.append("")

    lines += ["## Quality", ""]
    lines += _quality_lines(manifest, last_eval)
    lines.append("")

    extra = RUNTIME_EXTRA.get(manifest.target, manifest.target)
    lines += [
        "## How to run it", "",
        "```bash",
        f"pip install 'dp-sims[{extra},runtime]'",
        "python -m runtimes generate --model ARTIFACT_DIR --label label_map.png --seed 0 --out image.png",
        "python -m runtimes generate --model ARTIFACT_DIR --label label_map.png --seed 0 --n 4 --grid --out grid.png",
        "```", "",
        "```python",
        "from runtimes import load_predictor",
        "",
        'with load_predictor("ARTIFACT_DIR") as predictor:      # this folder: it holds model.json',
        '    image = predictor.generate("label_map.png", seed=0)  # (H, W, 3) uint8 RGB',
        "```", "",
        "A label map is a PNG (palette or grey ids, or RGB in the class colours below) or an integer array of "
        "class ids. The noise is drawn on the host from the seed (`numpy.random.default_rng(seed)`), so a seed "
        "names an image.", "",
    ]
    if manifest.target == "tensorrt":
        lines += ["The TensorRT engine is tied to a GPU model and TensorRT version: it is built on the device at "
                  "first load (or ahead of time with `python -m export --target tensorrt --from model.onnx`).", ""]
    if manifest.target == "coreml":
        lines += ["CoreML predicts on macOS only.", ""]

    lines += ["## Classes", "", "| id | name | colour |", "|---|---|---|"]
    lines += [f"| {c.id} | {c.name} | #{c.color[0]:02x}{c.color[1]:02x}{c.color[2]:02x} |"
              for c in sorted(manifest.classes, key=lambda c: c.id)]
    return "\n".join(lines) + "\n"


def _quality_lines(manifest: Manifest, last_eval: dict[str, Any] | None) -> list[str]:
    q = manifest.quality or {}
    cal = manifest.calibration or {}
    out = []
    if "max_abs_error_vs_torch" in q:
        out.append(f"- Against the float torch model: max abs error {q['max_abs_error_vs_torch']:.3g} "
                   f"({q.get('measured_with', 'this backend')}); the export is the float model.")
    elif "psnr_db" in q:
        psnr = q["psnr_db"]
        held = cal.get("held_out") or q.get("samples")
        out.append(f"- PSNR against FP32: **{'identical' if psnr is None else f'{psnr:.2f} dB'}** on "
                   f"{held} held-out label maps"
                   + (f" from {cal['source']}" if cal.get("source") else "")
                   + (f", measured with {q['measured_with']}" if q.get("measured_with") else "")
                   + (f"; max abs error {q['max_abs_error']:.3g}" if q.get("max_abs_error") is not None else "")
                   + ".")
        if q.get("label_consistency") is not None:
            out.append(f"- Label consistency (mIoU of a fixed classifier of the synthetic classes on the images "
                       f"against their maps): {q['label_consistency']:.4f}, FP32 {q['label_consistency_reference']:.4f} "
                       f"(delta {q['label_consistency_delta']:+.4f}).")
        kept = q.get("kept_high_precision")
        if isinstance(kept, dict) and kept.get("level"):
            out.append(f"- INT8 accuracy gate: passed at level \"{kept['level']}\" with "
                       f"{len(kept.get('layers') or [])} layers kept in float.")
    else:
        out.append("- No comparison against the float model was recorded for this export.")
    if cal.get("method"):
        out.append(f"- Calibration: {cal.get('samples', '?')} label maps from {cal.get('source', '?')}; {cal['method']}.")
    if last_eval:
        out.append(f"- Training run's label consistency at step {last_eval.get('step', '?')}: "
                   f"{float(last_eval['label_consistency']):.4f} (the float EMA generator, from `metrics.jsonl`).")
    return out


def write_model_card(artifact_dir: str | Path, manifest: Manifest, *, run_name: str, run_config: Path | None = None,
                     parameters: int | None = None) -> Path:
    """Write ``MODEL_CARD.md`` into ``artifact_dir`` (``run_config``: the run's config.yaml, when there is one)."""
    config, last_eval = read_run(run_config)
    path = Path(artifact_dir) / CARD_NAME
    path.write_text(model_card(manifest, run_name=run_name, run_config=config, last_eval=last_eval,
                               parameters=parameters), encoding="utf-8")
    return path

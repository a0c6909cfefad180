import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dpsims.errors import ConfigError
from train.config import CONFIG_DIR, Config, load_config

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("preset", sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
def test_every_preset_loads(preset):
    cfg = load_config(preset, ["data.root=/data"] if preset != "synthetic-tiny" else [])
    assert isinstance(cfg, Config)
    assert cfg.name == preset


def test_overrides_are_typed_and_applied():
    cfg = load_config("synthetic-tiny", ["train.batch_size=3", "train.lr_g=1e-3", "model.generator.channel_mults=[2, 2, 1]"])
    assert cfg.train.batch_size == 3
    assert cfg.train.lr_g == pytest.approx(1e-3)
    assert cfg.model.generator.channel_mults == [2, 2, 1]


@pytest.mark.parametrize(
    "override, words",
    [
        ("train.batchsize=8", ["'batchsize'", "batch_size"]),
        ("trian.steps=1", ["'trian'", "train"]),
        ("train.batch_size=eight", ["train.batch_size", "integer"]),
        ("train.amp=fp8", ["train.amp", "bf16"]),
        ("data.image_size=[60, 64]", ["multiple", "stride 8"]),
        ("train.flip", ["key.sub=value"]),
        # values that used to fail later, with a traceback at the first sample/eval step or a misleading message
        ("eval.sample_maps=0", ["eval.sample_maps", ">= 1"]),
        ("train.log_every=0", ["train.log_every", ">= 1"]),
        ("train.lr_g=-1", ["train.lr_g", "> 0"]),
        ("train.ema_decay=2", ["train.ema_decay", "0..1"]),
        ("train.betas=[0.5]", ["train.betas", "two Adam betas"]),
        ("train.device=tpu", ["train.device", "cuda:N"]),
        ("model.generator.noise_tokens=0", ["noise_tokens", ">= 1"]),
        ("data.num_workers=-1", ["data.num_workers", ">= 0"]),
        ("loss.diversity_fraction=nan", ["loss.diversity_fraction", "0..1"]),
    ],
)
def test_config_errors_name_the_key(override, words):
    with pytest.raises(ConfigError) as e:
        load_config("synthetic-tiny", [override])
    for w in words:
        assert w in str(e.value)


def test_unknown_preset_lists_presets():
    with pytest.raises(ConfigError, match="synthetic-tiny"):
        load_config("no-such-preset")


def test_real_dataset_needs_root():
    with pytest.raises(ConfigError, match="data.root"):
        load_config("ade20k-256")


def test_cli_bad_key_exit_code_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [sys.executable, "-m", "train", "--config", "synthetic-tiny", "--out", str(out), "--set", "train.nope=1"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2
    assert "Unknown key" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_cli_bad_dataset_folder_exit_2_and_writes_nothing(tmp_path):
    out = tmp_path / "run"
    (tmp_path / "ade").mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "train", "--config", "ade20k-256", "--out", str(out), "--set", f"data.root={tmp_path / 'ade'}",
         "--set", "model.discriminator.pretrained=false"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 2, r.stderr
    assert "ADEChallengeData2016" in r.stderr and "Traceback" not in r.stderr
    assert not out.exists()


def test_cli_set_takes_several_overrides_per_flag(tmp_path):
    """``--set a=1 b=2 --set c=3``: all three apply (the form the docs and config comments use)."""
    r = subprocess.run(
        [sys.executable, "-m", "train", "--config", "synthetic-tiny", "--print-config",
         "--set", "train.steps=7", "model.generator.stem_kernel=1", "--set", "train.batch_size=6"],
        capture_output=True, text=True, timeout=120,
    )
    assert r.returncode == 0, r.stderr
    cfg = yaml.safe_load(r.stdout)
    assert (cfg["train"]["steps"], cfg["model"]["generator"]["stem_kernel"], cfg["train"]["batch_size"]) == (7, 1, 6)


def test_print_config_works_where_the_run_folder_already_holds_a_run(tmp_path):
    """--print-config only prints: the demo's runs/synthetic-tiny (a finished run) does not make it refuse, while a
    training start there still does."""
    (tmp_path / "runs" / "synthetic-tiny" / "checkpoints" / "step_0000001").mkdir(parents=True)
    (tmp_path / "runs" / "synthetic-tiny" / "checkpoints" / "last").write_text("step_0000001\n")
    args = [sys.executable, "-m", "train", "--config", "synthetic-tiny", "--set", "train.steps=3"]
    r = subprocess.run([*args, "--print-config"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert yaml.safe_load(r.stdout)["train"]["steps"] == 3
    r = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "already holds a training run" in r.stderr, r.stderr

"""Progress of long steps: the INT8 gate logs its levels and sensitivity probes through logging (not print), bars
follow the log level, and a command line's -q silences both."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pytest

from calibration.sets import load_calibration_set
from dpsims.progress import bar, progress
from export.gate import run_gate


def test_gate_levels_and_probes_go_to_the_export_log_not_stdout(caplog, capsys):
    names = ["/a/x/Conv", "/b/y/Conv", "/c/z/Conv"]

    def attempt(kept):
        return {"psnr_db": 20.0 + 10.0 * len(kept)}, None  # every layer kept float adds 10 dB

    caplog.set_level(logging.INFO, logger="dpsims.export.gate")
    quality, kept, _ = run_gate(attempt, [("nothing float", [])], 35.0, "t int8", names=names, max_groups=3)
    assert quality["psnr_db"] == 40.0 and len(kept["layers"]) == 2
    messages = [r.getMessage() for r in caplog.records if r.name == "dpsims.export.gate"]
    assert messages[0] == "[t int8] gate step 1/1 (nothing float, 0 layers float): PSNR 20.00 dB (bar 35.0)"
    assert sum("sensitivity" in m and "only" in m for m in messages) == 3  # one probe per group
    assert all(r.levelno == logging.INFO for r in caplog.records if r.name == "dpsims.export.gate")
    assert capsys.readouterr().out == ""


def test_bars_follow_the_log_level():
    logger = logging.getLogger("dpsims")
    before = logger.level
    items = [1, 2, 3]
    try:
        logger.setLevel(logging.WARNING)  # -q
        assert progress(items, "x") is items
        assert type(bar("x", total=3)).__name__ == "_NoBar"
        logger.setLevel(logging.INFO)
        wrapped = progress(items, "x")
        assert wrapped is not items and list(wrapped) == items  # a tqdm bar (hidden off a terminal)
    finally:
        logger.setLevel(before)


def test_calibration_from_a_label_folder_still_reads_every_map(tmp_path):
    from PIL import Image

    for i in range(3):
        Image.fromarray(np.full((8, 8), i, np.uint8), mode="L").save(tmp_path / f"{i}.png")
    calib = load_calibration_set(tmp_path, num_classes=4, input_size=(8, 8), noise_shape=(2, 3), samples=5)
    assert len(calib) == 3 and [int(m[0, 0]) for m in calib.labels] == [0, 1, 2]


@pytest.mark.parametrize("quiet, shown", [([], True), (["-q"], False)])
def test_runtimes_generate_configures_logging(tmp_path, quiet, shown):
    """``python -m runtimes`` sets up logging (INFO for the package's loggers, -q: warnings only)."""
    code = ("import logging, sys\nfrom runtimes.__main__ import main\n"
            "import runtimes.__main__ as m\n"
            "m.cmd_info = lambda args: logging.getLogger('dpsims.runtimes.x').info('progress line') or 0\n"
            f"sys.exit(main({[*quiet, 'info']!r}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert ("INFO dpsims.runtimes.x: progress line" in r.stderr) is shown

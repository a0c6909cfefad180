"""Calibration data and the quality report shared by every export target (see sets, compare, adapters)."""

from calibration.compare import compare, compare_images, psnr, run_all, torch_runner
from calibration.sets import SYNTHETIC, CalibrationSet, draw_noise, load_calibration_set
from dpsims._version import __version__

__all__ = ["SYNTHETIC", "CalibrationSet", "__version__", "compare", "compare_images", "draw_noise",
           "load_calibration_set", "psnr", "run_all", "torch_runner"]

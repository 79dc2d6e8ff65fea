"""Run folders (atomic, resumable, locked), training runs, sweeps, re-evaluation, calibration, lambda tuning."""
from .calibrate import calibrate_run
from .demo import run_demo
from .evaluate import evaluate_run
from .folder import RunFolder, RunFolderError
from .run import RunFailed, build_data, run_experiment

__all__ = ["RunFailed", "RunFolder", "RunFolderError", "build_data", "calibrate_run", "evaluate_run", "run_demo",
           "run_experiment"]

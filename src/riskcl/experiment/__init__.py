"""Run folders (atomic, resumable, locked) and sweeps."""
from .run import RunFailed, load_run_predictions, read_config, read_status, run_experiment

__all__ = ["RunFailed", "load_run_predictions", "read_config", "read_status", "run_experiment"]

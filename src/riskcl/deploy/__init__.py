"""After training: predicting files, exporting a deployable model, its model card, saliency and a web page."""
from ..experiment.calibrate import operating_point
from .predict import decision_rows, predict_files

__all__ = ["decision_rows", "operating_point", "predict_files"]

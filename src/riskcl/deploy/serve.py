"""``riskcl serve``: a FastAPI app (served by uvicorn) with the run's model behind a triage page.

* ``POST /predict`` (multipart field ``file``) -> JSON: class probabilities, p(malignant), the decision ``refer`` /
  ``clear`` at the run's operating point (calibrated when ``calibration.json`` exists), the threshold and how it
  was chosen;
* ``POST /explain`` (same input) -> PNG: the image beside its p(malignant) saliency overlay;
* ``GET /`` -> one self-contained HTML page (no CDN): drop an image, see the decision, the probabilities and
  where the model looked; ``GET /health``; ``GET /model`` (the export metadata and the operating point in words).

The model is loaded once, at start. Requests run in FastAPI's thread pool (plain ``def`` endpoints), one model
call at a time behind a lock, so a slow request never blocks ``/health``. Bad input gets a 4xx JSON
``{"error": ...}`` naming what was wrong and the server keeps serving: a missing or wrongly named field, an empty
body, a file that is not an image or is truncated, an upload over the size limit (413), an image under 8 x 8
pixels. FastAPI and uvicorn come with the ``deploy`` extra (``pip install 'riskcl[deploy]'``).
"""
from __future__ import annotations

import io
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from ..data import BadImageError, decode_bytes
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from .explain import overlay, panel, saliency
from .export import export_metadata
from .predict import decision_rows, predict_arrays

MIN_SIDE = 8
DEFAULT_MAX_UPLOAD_MB = 20.0


def operating_point_text(op: dict[str, Any]) -> str:
    """The operating point in one plain sentence."""
    if op.get("groups"):
        return (f"Refers a case when p(malignant) >= {float(op['threshold']):.4f}, the pooled threshold of a "
                f"per-'{op['by']}' calibration ({op['method']}, alpha {op['alpha']}); the page does not know the "
                f"case's group, so the groups' own thresholds are not applied here.")
    if op.get("method") == "default":
        return (f"Refers a case when p(malignant) >= {op['threshold']:g}. Not calibrated: no guarantee on the "
                f"share of malignant cases it misses.")
    sens = 100 * (1 - float(op["alpha"]))
    how = (f"with probability {1 - float(op['delta']):g}" if op["method"] == "ltt" else "on average")
    return (f"Flags a malignant lesion with at least {sens:g}% sensitivity on data like the calibration set "
            f"({how}; threshold p(malignant) >= {float(op['threshold']):.4f}, {op['method']} on the "
            f"{op.get('calibration_split', '?')} split).")


class TriageService:
    """The loaded run: model, taxonomy, operating point; thread-safe prediction and explanation."""

    def __init__(self, run_dir: str | Path, method: str = "gradcam") -> None:
        self.folder = RunFolder(run_dir)
        self.folder.require_finished()
        self.cfg, self.taxonomy = self.folder.read_config(), self.folder.taxonomy()
        self.op = operating_point(self.folder)
        self.model = self.folder.load_model()
        self.method = method
        self.lock = threading.Lock()
        self.metadata = {**export_metadata(self.folder, "onnx", self.op), "format": "served by riskcl (PyTorch)",
                         "operating_point_text": operating_point_text(self.op)}
        self.metadata.pop("file", None)

    def image(self, data: bytes, name: str) -> np.ndarray:
        arr = decode_bytes(data, name)
        if min(arr.shape[:2]) < MIN_SIDE:
            raise BadImageError(name, f"image of {arr.shape[1]} x {arr.shape[0]} pixels is too small; expected at "
                                      f"least {MIN_SIDE} x {MIN_SIDE}")
        return arr

    def predict(self, arr: np.ndarray, name: str) -> dict[str, Any]:
        with self.lock:
            probs = predict_arrays(self.model, [arr], self.cfg.data.image_size)
        row = decision_rows(probs, self.taxonomy, float(self.op["threshold"]))[0]
        return {"image": name, "decision": row["decision"], "predicted": row["predicted"],
                "superclass": row["superclass"], "p_malignant": row["p_malignant"], "threshold": row["threshold"],
                "probabilities": {c: row[f"p_{c}"] for c in self.taxonomy.classes},
                "operating_point": {k: self.op.get(k) for k in ("method", "alpha", "delta", "how")},
                "image_size": [int(arr.shape[1]), int(arr.shape[0])]}

    def explain_png(self, arr: np.ndarray) -> bytes:
        from PIL import Image

        with self.lock:
            cam = saliency(self.model, [arr], self.cfg.data.image_size, self.taxonomy, "malignant", self.method)[0]
        buf = io.BytesIO()
        Image.fromarray(panel(arr, [overlay(arr, cam)])).save(buf, format="PNG")
        return buf.getvalue()


def create_app(run_dir: str | Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, method: str = "gradcam") -> FastAPI:
    """The FastAPI app serving one run."""
    service = TriageService(run_dir, method)
    limit = int(max_upload_mb * 1024 * 1024)
    page = files("riskcl.deploy").joinpath("page.html").read_text(encoding="utf-8")
    app = FastAPI(title="riskcl triage", version=service.metadata["riskcl_version"])

    class HTTPError(Exception):
        def __init__(self, status: int, message: str) -> None:
            self.status, self.message = status, message

    @app.exception_handler(HTTPError)
    def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "expected a multipart/form-data upload with the image in the field 'file'",
                             "detail": [e.get("msg") for e in exc.errors()]}, status_code=422)

    def read_upload(file: UploadFile, request: Request) -> np.ndarray:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise HTTPError(413, f"upload of {int(declared) / 2**20:.1f} MB exceeds the limit of {max_upload_mb:g} MB")
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPError(413, f"upload exceeds the limit of {max_upload_mb:g} MB")
        name = file.filename or "upload"
        try:
            return service.image(data, name)
        except BadImageError as exc:
            raise HTTPError(400 if not data else 415 if "cannot decode" in exc.reason else 422, str(exc)) from None

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"status": "ok", "run": str(service.folder.path)}

    @app.get("/model")
    def model() -> dict[str, Any]:
        return service.metadata

    @app.post("/predict")
    def predict(request: Request, file: UploadFile) -> dict[str, Any]:
        return service.predict(read_upload(file, request), file.filename or "upload")

    @app.post("/explain")
    def explain(request: Request, file: UploadFile) -> Response:
        return Response(service.explain_png(read_upload(file, request)), media_type="image/png")

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, method: str = "gradcam") -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(run_dir, max_upload_mb, method)
    print(f"riskcl serve: {run_dir} on http://{host}:{port}/  ({app.title}; Ctrl-C stops)", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")

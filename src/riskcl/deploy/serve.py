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
body, a file that is not an image or is truncated, an upload over the size limit (413, enforced while the body
streams in: never more than the limit is received or spooled), an image whose header declares more pixels than
riskcl's limit (413, refused before decoding), an image under 8 x 8 pixels. An uncertified calibration is
refused unless ``allow_uncertified`` (then the page says so on every answer). FastAPI and uvicorn come with
the ``deploy`` extra (``pip install 'riskcl[deploy]'``).
"""
from __future__ import annotations

import io
import json
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .._checks import check_int, check_number
from ..data import BadImageError, decode_bytes
from ..decision import OperatingPoint
from ..defaults import BORDERLINE
from ..experiment.calibrate import operating_point
from ..experiment.folder import RunFolder
from ..experiment.input_check import check_images, load_input_check
from .explain import blank_map_note, check_method, overlay, panel, saliency
from .export import describe_run
from .predict import decision_rows, predict_arrays

DEFAULT_MAX_UPLOAD_MB = 20.0
FRAMING = 64 * 1024  # multipart headers and boundaries around the image: allowed beyond the upload limit
NOTICE = ("Research use only; not a medical device. A CLEAR result does not rule out disease: the model misses "
          "some malignant lesions (see the operating point).")


def operating_point_text(op: OperatingPoint) -> str:
    """The operating point in plain sentences, for the page."""
    if op.per_group:
        return (f"Refers a case when p(malignant) >= {op.threshold:.4f}, the pooled threshold of a per-'{op.by}' "
                f"calibration ({op.method}, alpha {op.alpha}); the page does not know the case's group, so the "
                f"groups' own thresholds are not applied here.")
    if not op.calibrated:
        return (f"Refers a case when p(malignant) >= {op.threshold:g}. Not calibrated: no guarantee on the share of "
                f"malignant cases it misses.")
    if not op.certified:
        return (f"NOT CERTIFIED: refers a case when p(malignant) >= {op.threshold:.4f}, but calibration could not "
                f"certify alpha = {op.alpha}; no guarantee on the share of malignant cases it misses.")
    how = f"with probability {1 - float(op.delta):g}" if op.method == "ltt" else "on average"
    return (f"Flags a malignant lesion with at least {100 * (1 - float(op.alpha)):g}% sensitivity on data like the "
            f"calibration set ({how}; threshold p(malignant) >= {op.threshold:.4f}, {op.method} on the {op.split} "
            f"split).")


def check_serve_options(host: str, port: int, max_upload_mb: float, method: str, borderline: float) -> None:
    """Validate the service's options before anything loads (each error names the option and the value)."""
    check_int("--port", port, minimum=1)
    if port > 65535:
        raise ValueError(f"Expected `--port` to be an integer in 1..65535, but got {port}")
    check_number("--max-upload-mb", max_upload_mb, 0, None, min_inclusive=False)
    check_number("--borderline", borderline, 0, 1, max_inclusive=False)
    check_method(method)
    if not host:
        raise ValueError("Expected `--host` to be a host name or address, but got an empty string")


class UploadTooLarge(Exception):
    """The request body grew past the upload limit while it was received."""


class UploadLimit:
    """ASGI middleware that enforces the upload limit while the body streams in: a declared Content-Length over
    the limit is answered 413 before any byte is read, and a body without one (chunked) is cut off at the limit,
    so no more than the limit is ever received or spooled to disk."""

    def __init__(self, app, limit: int, limit_mb: float) -> None:
        self.app, self.limit, self.limit_mb = app, limit, limit_mb

    async def _reject(self, send, message: str) -> None:
        body = json.dumps({"error": message}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit + FRAMING:
            return await self._reject(send, f"upload of {int(declared) / 2**20:.1f} MB exceeds the limit of "
                                            f"{self.limit_mb:g} MB")
        state = {"received": 0, "over": False, "started": False}

        async def limited_receive():
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit + FRAMING:
                    state["over"] = True
                    raise UploadTooLarge()
            return message

        async def guarded_send(message):
            if state["over"]:  # the app's answer to the cut body is replaced by the 413
                return
            state["started"] |= message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except UploadTooLarge:
            pass
        if state["over"] and not state["started"]:
            await self._reject(send, f"upload exceeds the limit of {self.limit_mb:g} MB")


class TriageService:
    """The loaded run: model, taxonomy, operating point; thread-safe prediction and explanation."""

    def __init__(self, run_dir: str | Path, method: str = "gradcam", allow_uncertified: bool = False,
                 borderline: float = BORDERLINE) -> None:
        check_method(method)
        self.folder = RunFolder(run_dir)
        self.folder.require_finished(None)
        self.taxonomy = self.folder.taxonomy()
        self.op = operating_point(self.folder, allow_uncertified=allow_uncertified)
        self.model = self.folder.load_model()
        try:  # fitted once from the run's cached validation / calibration images
            self.input_check, check_text = load_input_check(self.folder.path), ""
        except (OSError, ValueError) as exc:  # e.g. the data folder moved: serve without it, and say so
            self.input_check, check_text = None, f"unavailable ({exc})"
        self.method, self.borderline = method, float(borderline)
        self.lock = threading.Lock()
        self.metadata = {**describe_run(self.folder, self.op), "format": "served by riskcl (PyTorch)",
                         "operating_point_text": operating_point_text(self.op), "notice": NOTICE,
                         "borderline": self.borderline, "certified": self.op.certified or not self.op.calibrated,
                         "input_check": check_text or self.input_check.describe()}

    def image(self, data: bytes, name: str) -> np.ndarray:
        return decode_bytes(data, name)  # the pixel limits (too large, too small) are the decoder's

    def predict(self, arr: np.ndarray, name: str) -> dict[str, Any]:
        with self.lock:
            probs = predict_arrays(self.model, [arr], self.op)
            distance = None if self.input_check is None else \
                float(check_images(self.model, self.input_check, [arr], self.op.image_size)[0])
        row = decision_rows(probs, self.taxonomy, self.op)[0]
        return {"image": name, "decision": row["decision"], "predicted": row["predicted"],
                "superclass": row["superclass"], "p_malignant": row["p_malignant"], "threshold": row["threshold"],
                "borderline": abs(row["p_malignant"] - row["threshold"]) <= self.borderline,
                "unusual": None if distance is None else distance > self.input_check.threshold,
                "input_distance": distance,
                "input_threshold": None if self.input_check is None else self.input_check.threshold,
                "probabilities": {c: row[f"p_{c}"] for c in self.taxonomy.classes},
                "operating_point": {"method": self.op.method, "alpha": self.op.alpha, "delta": self.op.delta,
                                    "certified": self.op.certified, "how": self.op.describe()},
                "image_size": [int(arr.shape[1]), int(arr.shape[0])]}

    def explain_png(self, arr: np.ndarray) -> tuple[bytes, str]:
        """The panel (image | overlay with a colour bar) and a note: empty, or why the map says nothing."""
        from PIL import Image

        with self.lock:
            cam = saliency(self.model, [arr], self.op.image_size, self.taxonomy, "malignant", self.method)[0]
        buf = io.BytesIO()
        Image.fromarray(panel(arr, [overlay(arr, cam)])).save(buf, format="PNG")
        return buf.getvalue(), blank_map_note(cam)


def create_app(run_dir: str | Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, method: str = "gradcam",
               allow_uncertified: bool = False, borderline: float = BORDERLINE) -> FastAPI:
    """The FastAPI app serving one run."""
    check_serve_options("127.0.0.1", 8000, max_upload_mb, method, borderline)
    service = TriageService(run_dir, method, allow_uncertified, borderline)
    limit = int(max_upload_mb * 1024 * 1024)
    page = files("riskcl.deploy").joinpath("page.html").read_text(encoding="utf-8")
    app = FastAPI(title="riskcl triage", version=service.metadata["riskcl_version"])
    app.add_middleware(UploadLimit, limit=limit, limit_mb=max_upload_mb)

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

    def read_upload(file: UploadFile) -> np.ndarray:
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPError(413, f"upload exceeds the limit of {max_upload_mb:g} MB")
        name = file.filename or "upload"
        try:
            return service.image(data, name)
        except BadImageError as exc:
            status = 400 if not data else 413 if exc.reason.startswith("refused") else \
                415 if "cannot decode" in exc.reason else 422
            raise HTTPError(status, str(exc)) from None

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
    def predict(file: UploadFile) -> dict[str, Any]:
        return service.predict(read_upload(file), file.filename or "upload")

    @app.post("/explain")
    def explain(file: UploadFile) -> Response:
        png, note = service.explain_png(read_upload(file))
        return Response(png, media_type="image/png", headers={"X-Saliency-Note": note} if note else None)

    return app


def serve(run_dir: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, method: str = "gradcam", allow_uncertified: bool = False,
          borderline: float = BORDERLINE) -> None:
    """Run the app with uvicorn until interrupted; the address is bound (or the error names it) before the
    "serving on" line is printed."""
    import socket

    import uvicorn

    check_serve_options(host, port, max_upload_mb, method, borderline)
    app = create_app(run_dir, max_upload_mb, method, allow_uncertified, borderline)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    print(f"riskcl serve: {run_dir} on http://{host}:{port}/  ({app.title}; Ctrl-C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])

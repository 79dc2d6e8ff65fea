"""``riskcl serve``: a FastAPI app (served by uvicorn) with a model behind a triage page.

The model is a run folder (PyTorch) or an export folder (``riskcl_export.json`` + ``model.onnx``, served by ONNX
Runtime alone: ``pip install 'riskcl[serve]'`` needs no PyTorch). Both answer the same API with the same numbers:

* ``POST /predict`` (multipart field ``file``) -> JSON: class probabilities, p(malignant), the decision ``refer`` /
  ``clear`` at the operating point (calibrated when ``calibration.json`` exists, the exported one for an export),
  the threshold and how it was chosen, and (run folders) whether the image looks unlike the calibration data;
* ``POST /explain`` (same input) -> PNG: the image beside its p(malignant) saliency overlay (run folders; an
  export answers 501 and the page says why);
* ``GET /`` -> one self-contained HTML page (no CDN): drop an image, see the decision, the probabilities and
  where the model looked; ``GET /health``; ``GET /model`` (the model's description and the operating point in
  words).

The model is loaded once, at start. Requests run in FastAPI's thread pool (plain ``def`` endpoints) and
concurrent images are scored together (:mod:`riskcl.deploy.batching`: up to ``max_batch`` images, waiting at most
``max_wait_ms``), so a slow request never blocks ``/health``. ``threads`` sets ONNX Runtime's intra-op threads
(or PyTorch's); for more cores run several workers (:func:`app_from_env`). Bad input gets a 4xx JSON
``{"error": ...}`` naming what was wrong and the server keeps serving: a missing or wrongly named field, an empty
body, a file that is not an image or is truncated, an upload over the size limit (413, enforced while the body
streams in: never more than the limit is received or spooled), an image whose header declares more pixels than
riskcl's limit (413, refused before decoding), an image under 8 x 8 pixels. An uncertified calibration is
refused unless ``allow_uncertified`` (then the page says so on every answer).
"""
from __future__ import annotations

import contextlib
import json
import threading
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .._checks import check_int, check_method, check_number
from ..data.decoding import BadImageError, decode_bytes
from ..data.encoding import METADATA_ONLY
from ..decision import OperatingPoint
from ..defaults import BORDERLINE, MAX_BATCH, MAX_WAIT_MS, SALIENCY
from .batching import MicroBatcher
from ..data.encode_metadata import MetadataValueError
from .prediction_csv import ERROR
from .scoring import decision_rows, open_scorer

DEFAULT_MAX_UPLOAD_MB = 20.0
FRAMING = 64 * 1024  # multipart headers and boundaries around the image: allowed beyond the upload limit
NOTICE = ("Research use only; not a medical device. A CLEAR result does not rule out disease: the model misses "
          "some malignant lesions (see the operating point).")
SEGMENTATION_NOTICE = ("Research use only; not a medical device. The outline can miss part of the lesion (see the "
                       "operating point): OUTLINED does not mean that all of the lesion lies inside it, and REVIEW "
                       "means that no lesion was found or much of the outline is uncertain, so a person should look.")


class Refused(ValueError):
    """A request riskcl will not decide (metadata it cannot read, a non-finite score): answered 422."""


def operating_point_text(op: OperatingPoint) -> str:
    """The operating point in plain sentences, for the page."""
    if op.segmentation:
        if not op.calibrated:
            return (f"Outlines the lesion where p(lesion) >= {op.threshold:g}. Not calibrated: no guarantee on the "
                    f"share of the lesion it misses.")
        return (f"Outlines the lesion where p(lesion) >= {op.threshold:.4f}: {op.guarantee}. REVIEW means no lesion "
                f"was found or much of the outline is uncertain.")
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
    text = (f"Flags a malignant lesion with at least {100 * (1 - float(op.alpha)):g}% sensitivity on data like the "
            f"calibration set ({how}; threshold p(malignant) >= {op.threshold:.4f}, {op.method} on the {op.split} "
            f"split)")
    if op.inputs is None:
        return text + "."
    none = op.for_inputs("none")
    return (text + " for requests with every clinical field. Requests without clinical data are decided at "
            + (f"their own certified threshold {none.threshold:.4f}" if none.certified else
               "the lowest calibrated threshold, NOT CERTIFIED (no point could be certified without them)")
            + "; requests with some fields missing carry no guarantee (each answer says which point decided it).")


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
    """A served model: a run folder (PyTorch: probabilities, the input check, saliency) or an export folder (ONNX
    Runtime alone: probabilities; no input check or saliency, said so in ``/model`` and on the page).

    Concurrent predictions are batched (:class:`riskcl.deploy.batching.MicroBatcher`); the run folder's model is
    used by one call at a time (saliency hooks into it), an ONNX Runtime session by several."""

    def __init__(self, target: str | Path, method: str = SALIENCY, allow_uncertified: bool = False,
                 borderline: float = BORDERLINE, threads: int | None = None, max_batch: int = MAX_BATCH,
                 max_wait_ms: float = MAX_WAIT_MS) -> None:
        check_method(method)
        self.target = Path(target)
        # A service never ships an unfinished run (None: the error does not offer --allow-unfinished).
        self.scorer = open_scorer(target, allow_uncertified=allow_uncertified, allow_unfinished=None,
                                  threads=threads)
        self.taxonomy, self.op = self.scorer.taxonomy, self.scorer.op
        if self.op.segmentation:  # the outline is the explanation, from a run or an export alike
            self.input_check = None
            check_text = "not available for segmentation models yet"
            if self.scorer.kind == "run":
                from .export import describe_run

                description = {**describe_run(self.scorer.folder, self.op), "format": "served by riskcl (PyTorch)"}
            else:
                description = {**self.scorer.meta, "format": f"served from an ONNX export by {self.scorer.runtime}"}
            saliency_note = ""
        elif self.scorer.kind == "run":
            from .export import describe_run  # PyTorch: only a run folder's service gets here

            self.input_check, check_text = self.scorer.load_input_check()
            description = {**describe_run(self.scorer.folder, self.op), "format": "served by riskcl (PyTorch)"}
            from .explain import ADOPTED_NOTE, NO_IMAGE_NOTE

            saliency_note = f"{NO_IMAGE_NOTE}." if self.scorer.folder.read_config().model.name == METADATA_ONLY else \
                f"{ADOPTED_NOTE}." if self.scorer.folder.adopted() is not None else ""
        else:
            self.input_check = None
            check_text = "not in an export (serve the run folder to flag unusual images)"
            description = {**self.scorer.meta, "format": f"served from an ONNX export by {self.scorer.runtime}"}
            saliency_note = ("Saliency is not served from an exported model: serve the run folder (riskcl serve RUN) "
                             "to see where the model looked.")
        self.method, self.borderline = method, float(borderline)
        encoding = getattr(self.scorer, "encoding", None)
        self.metadata_columns = [] if encoding is None else encoding.column_names
        self.lock = threading.Lock() if self.scorer.kind == "run" else contextlib.nullcontext()
        self.batcher = MicroBatcher(self._score, max_batch, max_wait_ms)
        self.encoding = encoding
        self.metadata = {**description, "operating_point_text": operating_point_text(self.op),
                         "notice": SEGMENTATION_NOTICE if self.op.segmentation else NOTICE,
                         "borderline": self.borderline, "certified": self.op.certified or not self.op.calibrated,
                         "input_check": check_text, "input_check_available": self.input_check is not None,
                         "saliency": not saliency_note, "saliency_note": saliency_note,
                         "batching": {"max_batch": self.batcher.max_batch,
                                      "max_wait_ms": 1000 * self.batcher.max_wait}}

    def image(self, data: bytes, name: str) -> np.ndarray:
        return decode_bytes(data, name)  # the pixel limits (too large, too small) are the decoder's

    def _score(self, items: list[tuple[np.ndarray, dict | None]]) -> list[tuple[np.ndarray, float | None]]:
        images = [image for image, _ in items]
        with self.lock:
            if getattr(self.scorer, "encoding", None) is not None:  # a fusion model: each image's metadata too
                probs = self.scorer.probabilities(images, [row or {} for _, row in items])
            else:
                probs = self.scorer.probabilities(images)
            distances = [None] * len(images) if self.input_check is None else \
                [float(d) for d in self.scorer.distances(self.input_check, images)]
        return list(zip(probs, distances))

    def predict(self, arr: np.ndarray, name: str, metadata: dict | None = None) -> dict[str, Any]:
        """The answer for one image; ``metadata``: a fusion model's ``{column: value}`` (missing: none sent)."""
        if self.op.segmentation:
            return self._outline(arr, name)
        pattern = None if self.encoding is None else self.encoding.pattern(metadata)
        probs, distance = self.batcher((arr, metadata))
        row = decision_rows(probs[None], self.taxonomy, self.op, patterns=None if pattern is None else [pattern])[0]
        if row["decision"] == ERROR:
            raise Refused(row["error"])
        point = self.op if pattern is None else self.op.for_inputs(pattern)
        return {"image": name, "decision": row["decision"], "predicted": row["predicted"],
                "superclass": row["superclass"], "p_malignant": row["p_malignant"], "threshold": row["threshold"],
                "borderline": abs(row["p_malignant"] - row["threshold"]) <= self.borderline,
                "unusual": None if distance is None else distance > self.input_check.threshold,
                "input_distance": distance,
                "input_threshold": None if self.input_check is None else self.input_check.threshold,
                "probabilities": {c: row[f"p_{c}"] for c in self.taxonomy.classes},
                "operating_point": {"method": point.method, "alpha": point.alpha, "delta": point.delta,
                                    "certified": point.certified or not point.calibrated, "how": point.describe()},
                "image_size": [int(arr.shape[1]), int(arr.shape[0])],
                **({"metadata_used": {c: (metadata or {}).get(c) for c in self.metadata_columns},
                    "metadata_inputs": pattern} if self.metadata_columns else {})}

    def parse_metadata(self, text: str | None) -> dict | None:
        """The ``metadata`` form field: a JSON object ``{column: value}`` of the model's metadata columns."""
        if text is None or not text.strip():
            return None
        if not self.metadata_columns:
            raise ValueError("this model reads no metadata; send the image alone")
        try:
            row = json.loads(text)
        except ValueError:
            row = None
        if not isinstance(row, dict):
            raise ValueError(f"the field 'metadata' must be a JSON object like {{\"{self.metadata_columns[0]}\": "
                             f"...}} with some of {self.metadata_columns}")
        unknown = sorted(set(row) - set(self.metadata_columns))
        if unknown:
            raise ValueError(f"the field 'metadata' names {unknown}, which this model does not read (it reads "
                             f"{self.metadata_columns})")
        row = {k: None if v is None else str(v) for k, v in row.items()}
        try:
            self.encoding.encode_row(row)  # a value the model cannot read is refused here, never scored
        except MetadataValueError as exc:
            raise ValueError(str(exc)) from None
        return row

    def _outline(self, arr: np.ndarray, name: str) -> dict[str, Any]:
        """A segmentation model's answer: the row ``riskcl predict`` writes (:mod:`riskcl.deploy.segmentation`)
        and the outline's pixels."""
        from .segmentation import segmentation_rows

        probs, _ = self.batcher((arr, None))
        row = segmentation_rows([probs], self.op, [name], [arr])[0]
        if row["decision"] == ERROR:
            raise Refused(row["error"])
        row.pop("mask")
        row.pop("error", None)
        return {**row, "task": "segmentation",
                "operating_point": {"method": self.op.method, "alpha": self.op.alpha, "delta": self.op.delta,
                                    "certified": self.op.certified, "how": self.op.describe()},
                "image_size": [int(arr.shape[1]), int(arr.shape[0])]}

    def outline_png(self, arr: np.ndarray) -> tuple[bytes, str]:
        """The image beside itself with the lesion's outline at the operating point, as PNG."""
        import io

        from PIL import Image

        from .segmentation import overlay, to_image_grid

        probs, _ = self.batcher((arr, None))
        mask = to_image_grid(np.asarray(probs, dtype=np.float32), *arr.shape[:2]) >= self.op.threshold
        buf = io.BytesIO()
        Image.fromarray(np.concatenate([arr, overlay(arr, mask)], axis=1)).save(buf, format="PNG")
        return buf.getvalue(), f"the lesion's outline where p(lesion) >= {self.op.threshold:.4f}"

    def explain_png(self, arr: np.ndarray) -> tuple[bytes, str] | None:
        """The saliency panel as PNG and a note (:func:`riskcl.deploy.explain.saliency_png`); None from an export.
        A segmentation model answers with its outline (:meth:`outline_png`)."""
        if self.op.segmentation:
            return self.outline_png(arr)
        if not self.metadata["saliency"]:
            return None
        from .explain import saliency_png  # PyTorch: only a run folder's service gets here

        with self.lock:
            try:
                png, note = saliency_png(self.scorer.model, arr, self.op.image_size, self.taxonomy, self.method)
            except ValueError as exc:  # no layer to explain: said, never a 500
                raise Refused(f"no saliency for this model: {exc}") from None
        if self.metadata_columns:  # a fusion model's map explains the image alone
            note = "saliency of the image with the clinical data treated as missing" + (f"; {note}" if note else "")
        return png, note


def create_app(target: str | Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, method: str = SALIENCY,
               allow_uncertified: bool = False, borderline: float = BORDERLINE, threads: int | None = None,
               max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS) -> FastAPI:
    """The FastAPI app serving one run folder or export folder."""
    check_serve_options("127.0.0.1", 8000, max_upload_mb, method, borderline)
    service = TriageService(target, method, allow_uncertified, borderline, threads, max_batch, max_wait_ms)
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
        return {"status": "ok"}  # nothing internal (no path): anyone who can reach the port may ask

    @app.get("/model")
    def model() -> dict[str, Any]:
        return service.metadata

    @app.post("/predict")
    def predict(file: UploadFile, metadata: str | None = Form(None)) -> dict[str, Any]:
        try:
            row = service.parse_metadata(metadata)
        except ValueError as exc:
            raise HTTPError(422, str(exc)) from None
        try:
            return service.predict(read_upload(file), file.filename or "upload", row)
        except Refused as exc:
            raise HTTPError(422, str(exc)) from None

    @app.post("/explain")
    def explain(file: UploadFile) -> Response:
        arr = read_upload(file)
        try:
            answer = service.explain_png(arr)
        except Refused as exc:
            raise HTTPError(501, str(exc)) from None
        if answer is None:
            raise HTTPError(501, service.metadata["saliency_note"])
        png, note = answer
        return Response(png, media_type="image/png", headers={"X-Saliency-Note": note} if note else None)

    app.state.service = service
    return app


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --workers N --factory riskcl.deploy.serve:app_from_env`` (one model per worker
    process, for machines with more cores): the model folder in ``RISKCL_SERVE_MODEL``, the upload limit in
    ``RISKCL_SERVE_MAX_UPLOAD_MB`` and ONNX Runtime / PyTorch threads per worker in ``RISKCL_SERVE_THREADS``."""
    import os

    target = os.environ.get("RISKCL_SERVE_MODEL")
    if not target:
        raise ValueError("RISKCL_SERVE_MODEL is not set: name the run folder or export folder to serve")
    threads = os.environ.get("RISKCL_SERVE_THREADS")
    return create_app(target, float(os.environ.get("RISKCL_SERVE_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)),
                      threads=int(threads) if threads else None)


def serve(target: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, method: str = SALIENCY, allow_uncertified: bool = False,
          borderline: float = BORDERLINE, threads: int | None = None, max_batch: int = MAX_BATCH,
          max_wait_ms: float = MAX_WAIT_MS) -> None:
    """Run the app with uvicorn until interrupted; the address is bound (or the error names it) before the
    "serving on" line is printed."""
    import socket

    import uvicorn

    check_serve_options(host, port, max_upload_mb, method, borderline)
    app = create_app(target, max_upload_mb, method, allow_uncertified, borderline, threads, max_batch, max_wait_ms)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it: a response's header and body leave at once instead of the body waiting
    # for the client's delayed ACK (about 40 ms per request on a kept-alive connection).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise OSError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    print(f"riskcl serve: {target} on http://{host}:{port}/  ({app.title}; Ctrl-C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])

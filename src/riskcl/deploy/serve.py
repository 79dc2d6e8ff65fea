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

import sys
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Any

import numpy as np
from fastapi import FastAPI, Form, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response

from .._checks import check_int, check_method, check_number
from ..data.decoding import BadImageError
from ..defaults import BORDERLINE, MAX_BATCH, MAX_WAIT_MS, SALIENCY
from .access import AccessControl, ClientLimits, TokenFile, UploadLimit, is_loopback
from .decision_log import DEFAULT_LOG, DEFAULT_MAX_MB, DecisionLog, LogUnavailable, point_id, read_state
from .service import NOTICE, SEGMENTATION_NOTICE, Refused, TriageService, operating_point_text  # noqa: F401
from .service_metrics import MetricsMiddleware

DEFAULT_MAX_UPLOAD_MB = 20.0


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


@dataclass
class ServiceOptions:
    """Who may ask, what is recorded, what is measured (``riskcl serve`` options; the defaults suit a laptop)."""

    tokens: str | None = None          # token file (riskcl serve-token); None: no authentication
    no_auth: bool = False              # serve a non-loopback address without tokens, knowingly
    log: str | None = None             # decision log file (None: no log; the CLI always names one)
    log_max_mb: float = DEFAULT_MAX_MB  # rotate the log at this size
    log_key: str | None = None         # the keyed-hash key (default: <log>.key)
    rate_per_minute: int | None = None  # requests per minute per client (None: no limit)
    max_concurrent: int | None = None  # concurrent requests per client (None: no limit)
    allow_origin: tuple[str, ...] = ()  # CORS origins allowed (none: no CORS headers)
    metrics_public: bool = False       # /metrics without a token


PUBLIC = frozenset({"/health", "/ready", "/"})  # the probes, and the page (static; it asks for the token)


def check_access(host: str, options: ServiceOptions) -> None:
    """Refuse to answer anyone on the network without tokens, unless told (--no-auth)."""
    if options.tokens is None and not options.no_auth and not is_loopback(host):
        raise ValueError(f"--host {host} is reachable from the network, and without --tokens anyone who can reach it "
                         f"could use the service; create tokens (riskcl serve-token add NAME --tokens FILE) and pass "
                         f"--tokens FILE, or pass --no-auth to serve without them knowingly")
    for name, value in (("--rate-limit", options.rate_per_minute), ("--max-concurrent", options.max_concurrent)):
        if value is not None:
            check_int(name, value, minimum=1)


def _access_text(options: ServiceOptions, tokens) -> str:
    if tokens is not None:
        return f"bearer tokens ({tokens.active} active client(s))"
    return "NONE: started with --no-auth, so anyone who can reach it may ask" if options.no_auth else \
        "none (loopback only: reachable from this machine alone)"


def create_app(target: str | Path, max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, method: str = SALIENCY,
               allow_uncertified: bool = False, borderline: float = BORDERLINE, threads: int | None = None,
               max_batch: int = MAX_BATCH, max_wait_ms: float = MAX_WAIT_MS, options: ServiceOptions | None = None,
               host: str = "127.0.0.1") -> FastAPI:
    """The FastAPI app serving one run folder or export folder (``options``: tokens, limits, the decision log,
    CORS and metrics; ``host``: where it will listen, for the access check)."""
    options = options or ServiceOptions()
    check_serve_options(host, 8000, max_upload_mb, method, borderline)
    check_access(host, options)
    tokens = TokenFile(options.tokens) if options.tokens else None
    metrics = None
    service = TriageService(target, method, allow_uncertified, borderline, threads, max_batch, max_wait_ms,
                            on_batch=lambda n: metrics.batches.observe(n) if metrics is not None else None)
    # the log (and its key) only once the model has loaded: a refused start leaves no file behind
    log = service.log = DecisionLog(options.log, options.log_max_mb, options.log_key) if options.log else None
    service.metadata["access"] = _access_text(options, tokens)
    service.metadata["decision_log"] = "recorded (one chained line per decision)" if log else "not recorded"
    metrics = _metrics(service)
    limit = int(max_upload_mb * 1024 * 1024)
    page = files("riskcl.deploy").joinpath("page.html").read_text(encoding="utf-8")
    app = FastAPI(title="riskcl triage", version=service.metadata["riskcl_version"], docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.add_middleware(UploadLimit, limit=limit, limit_mb=max_upload_mb)
    public = PUBLIC | ({"/metrics"} if options.metrics_public else set())
    app.add_middleware(AccessControl, tokens=tokens, limits=ClientLimits(options.rate_per_minute,
                                                                          options.max_concurrent), public=public)
    if options.allow_origin:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(options.allow_origin), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=["X-Request-ID"])
    if metrics is not None:
        app.add_middleware(MetricsMiddleware, metrics=metrics)

    class HTTPError(Exception):
        def __init__(self, status: int, message: str) -> None:
            self.status, self.message = status, message

    @app.exception_handler(HTTPError)
    def _http_error(request: Request, exc: HTTPError) -> JSONResponse:
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(RequestValidationError)
    def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"error": "expected a multipart/form-data upload with the image in the field 'file'"},
                            status_code=422)

    @app.exception_handler(Exception)
    def _internal(request: Request, exc: Exception) -> JSONResponse:  # no path, no trace: said plainly
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the service goes on"},
                            status_code=500)

    def read_upload(file: UploadFile) -> tuple[np.ndarray, bytes]:
        data = file.file.read(limit + 1)
        if len(data) > limit:
            raise HTTPError(413, f"upload exceeds the limit of {max_upload_mb:g} MB")
        try:  # errors name the file as the client named it (never a path of this machine)
            return service.image(data, file.filename or "upload"), data
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

    @app.get("/ready")
    def ready() -> JSONResponse:
        writable = log is None or log.writable()
        return JSONResponse({"ready": writable, "model": "loaded", "decision_log": "writable" if writable else
                             "NOT writable: decisions are refused (503) until it is"}, status_code=200 if writable
                            else 503)

    @app.get("/model")
    def model() -> dict[str, Any]:
        return {**service.metadata, "monitor": read_state(options.log)}  # the last `riskcl monitor` of the log

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        if metrics is None:
            raise HTTPError(501, "metrics need the prometheus-client package (pip install 'riskcl[serve]')")
        body, content_type = metrics.render()
        return Response(body, media_type=content_type)

    @app.post("/predict")
    def predict(request: Request, response: Response, file: UploadFile,
                metadata: str | None = Form(None)) -> dict[str, Any]:
        try:
            row = service.parse_metadata(metadata)
        except ValueError as exc:
            raise HTTPError(422, str(exc)) from None
        arr, data = read_upload(file)
        source = "page" if request.headers.get("x-riskcl-source") == "page" else "api"
        try:
            answer = service.predict(arr, file.filename or "upload", row, request.state.client, source, data)
        except Refused as exc:
            raise HTTPError(422, str(exc)) from None
        except LogUnavailable as exc:  # no answer without its record; the operator's stderr names the file
            print(f"riskcl serve: {exc}", file=sys.stderr, flush=True)
            raise HTTPError(503, f"the decision log cannot be written on the server ({exc.reason}): the decision "
                                 f"was not given; retry later") from None
        response.headers["X-Request-ID"] = answer["request_id"]
        if metrics is not None:
            metrics.decided(answer)
        return answer

    @app.post("/explain")
    def explain(file: UploadFile) -> Response:
        arr, _ = read_upload(file)
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


def _metrics(service: TriageService):
    """The service's metrics (None without prometheus-client: /metrics then says so)."""
    try:
        from .service_metrics import ServiceMetrics
    except ImportError:
        return None
    op = service.op
    try:
        metrics = ServiceMetrics({"model_sha256": service.scorer.identity, "operating_point": point_id(op),
                                  "threshold": f"{op.threshold:.6g}", "method": op.method,
                                  "certified": str(bool(op.certified)).lower(),
                                  "riskcl": str(service.metadata.get("riskcl_version"))},
                                 lambda: service.batcher.queue.qsize())
    except ImportError:
        return None
    metrics.load.set(service.load_seconds)
    return metrics


def app_from_env() -> FastAPI:
    """The app for ``uvicorn --workers N --factory riskcl.deploy.serve:app_from_env`` (one model per worker
    process, for machines with more cores): the model folder in ``RISKCL_SERVE_MODEL``, the upload limit in
    ``RISKCL_SERVE_MAX_UPLOAD_MB``, ONNX Runtime / PyTorch threads per worker in ``RISKCL_SERVE_THREADS``, the
    token file in ``RISKCL_SERVE_TOKENS`` and the decision log in ``RISKCL_SERVE_LOG`` (one per worker: the
    worker's process id is added to its name, so that each file keeps its own chain)."""
    import os

    target = os.environ.get("RISKCL_SERVE_MODEL")
    if not target:
        raise ValueError("RISKCL_SERVE_MODEL is not set: name the run folder or export folder to serve")
    threads = os.environ.get("RISKCL_SERVE_THREADS")
    log = os.environ.get("RISKCL_SERVE_LOG")
    options = ServiceOptions(tokens=os.environ.get("RISKCL_SERVE_TOKENS") or None,
                             log=f"{log}.{os.getpid()}" if log else None)
    return create_app(target, float(os.environ.get("RISKCL_SERVE_MAX_UPLOAD_MB", DEFAULT_MAX_UPLOAD_MB)),
                      threads=int(threads) if threads else None, options=options)


def serve(target: str | Path, host: str = "127.0.0.1", port: int = 8000,
          max_upload_mb: float = DEFAULT_MAX_UPLOAD_MB, method: str = SALIENCY, allow_uncertified: bool = False,
          borderline: float = BORDERLINE, threads: int | None = None, max_batch: int = MAX_BATCH,
          max_wait_ms: float = MAX_WAIT_MS, options: ServiceOptions | None = None,
          ssl_certfile: str | None = None, ssl_keyfile: str | None = None) -> None:
    """Run the app with uvicorn until interrupted; the address is bound (or the error names it) before the model
    loads, and the "serving on" line names the decision log. ``ssl_certfile`` / ``ssl_keyfile``: HTTPS."""
    import socket

    import uvicorn

    options = options or ServiceOptions(log=DEFAULT_LOG)
    check_serve_options(host, port, max_upload_mb, method, borderline)
    check_access(host, options)
    if (ssl_certfile is None) != (ssl_keyfile is None):
        raise ValueError("--ssl-certfile and --ssl-keyfile go together (the certificate and its private key)")
    for name, value in (("--ssl-certfile", ssl_certfile), ("--ssl-keyfile", ssl_keyfile)):
        if value is not None and not Path(value).is_file():
            raise FileNotFoundError(f"{name} {value}: no such file")
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
    try:
        app = create_app(target, max_upload_mb, method, allow_uncertified, borderline, threads, max_batch,
                         max_wait_ms, options, host)
    except BaseException:
        sock.close()
        raise
    scheme = "https" if ssl_certfile else "http"
    print(f"riskcl serve: {target} on {scheme}://{host}:{port}/  ({app.title}; access: "
          f"{app.state.service.metadata['access']}; decision log: {options.log or 'none'}; Ctrl-C stops)", flush=True)
    uvicorn.Server(uvicorn.Config(app, log_level="warning", ssl_certfile=ssl_certfile, ssl_keyfile=ssl_keyfile)
                   ).run(sockets=[sock])

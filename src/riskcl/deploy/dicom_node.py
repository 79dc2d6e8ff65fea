"""A DICOM node in front of riskcl's scorer (pynetdicom): a PACS sends images by C-STORE, the node triages each
exactly as ``riskcl serve`` would (the same :class:`riskcl.deploy.service.TriageService`: operating point, input
check, pixel limits, decision log) and sends the results (:mod:`riskcl.deploy.dicom_results`) back by C-STORE.

* Who may send: the calling AE titles of ``accept`` (others are rejected at association); at most
  ``max_associations`` at once (more are rejected as a transient local limit), so a burst is bounded.
* What is answered: ``0x0000`` once an image is decided and its results are in the spool; a DICOM failure status
  with a short comment otherwise (``0xC210`` an image riskcl cannot read, ``0xC211`` one it refuses to decide,
  ``0xA700`` when the decision log cannot record), never a crash.
* Nothing is lost when the destination is down: results are written to the spool folder first (atomically) and a
  sender thread sends them, oldest first, retrying with a growing pause (up to ``retry_max`` seconds); a file is
  removed only once the destination answered success. Results the destination refuses for good (a failure status
  other than out-of-resources) move to ``spool/refused/`` with the reason beside them. A restarted node sends what
  its spool holds.
"""
from __future__ import annotations

import io
import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..data.decoding import BadImageError
from ..data.rgb import ImageTooLargeError, ImageTooSmallError
from .access import is_loopback
from .decision_log import DecisionLog, LogUnavailable
from .dicom_results import DicomResults, missing_references
from .service import Refused, TriageService

LOG = logging.getLogger("riskcl.dicom_node")
CANNOT_UNDERSTAND, UNABLE_TO_PROCESS, OUT_OF_RESOURCES = 0xC210, 0xC211, 0xA700
RESULT_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33",  # Comprehensive SR
                  "1.2.840.10008.5.1.4.1.1.66.4",   # Segmentation
                  "1.2.840.10008.5.1.4.1.1.7")      # Secondary Capture


@dataclass
class Destination:
    """Where results go: ``AET@HOST:PORT``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        aet, _, address = text.partition("@")
        host, _, port = address.rpartition(":")
        if not aet or not host or not port.isdigit() or not 0 < int(port) < 65536 or len(aet) > 16:
            raise ValueError(f"--send-to {text!r}: expected AET@HOST:PORT (an AE title of at most 16 characters, a "
                             f"port 1-65535), e.g. ORTHANC@pacs.example.org:4242")
        return cls(aet, host, int(port))


@dataclass
class NodeState:
    """What the node has done (read by the CLI's summary and the tests)."""

    received: int = 0
    decided: int = 0
    failed: dict[str, int] = field(default_factory=dict)
    sent: int = 0
    refused_by_destination: int = 0
    last_send_error: str | None = None


class DicomNode:
    """The node: ``start()`` listens (non-blocking), ``stop()`` shuts the server and the sender down. ``log``: the
    decision log's file (None: no log), ``log_key``: its key's file (default: ``<log>.key``)."""

    def __init__(self, target: str | os.PathLike, ae_title: str = "RISKCL", host: str = "127.0.0.1",
                 port: int = 11112, accept: list[str] | None = None, send_to: str | None = None,
                 spool: str | os.PathLike = "riskcl_spool", log: str | os.PathLike | None = None,
                 log_key: str | os.PathLike | None = None, allow_uncertified: bool = False,
                 threads: int | None = None, max_associations: int = 4, retry_max: float = 60.0,
                 pictures: bool = True) -> None:
        if not ae_title or len(ae_title) > 16:
            raise ValueError(f"--ae-title {ae_title!r}: expected 1-16 characters")
        self.ae_title, self.host, self.port = ae_title, host, int(port)
        self.accept = list(accept or [])
        if not self.accept and not is_loopback(host):
            raise ValueError(f"--host {host} is reachable from the network, and without --accept any modality could "
                             f"send images; name the calling AE titles it accepts (--accept PACS_AET ...)")
        if not 0 < self.port < 65536:
            raise ValueError(f"--port {port}: expected 1-65535")
        self.destination = Destination.parse(send_to) if send_to else None
        self.service = TriageService(target, allow_uncertified=allow_uncertified, threads=threads)
        # the log (and its key) only once the model has loaded: a refused start leaves no file behind
        self.service.log = DecisionLog(log, key_path=log_key) if log else None
        self.results = DicomResults.of_scorer(self.service.scorer)
        self.pictures = pictures and (self.service.op.segmentation or bool(self.service.metadata["saliency"]))
        self.spool = Path(spool)
        (self.spool / "refused").mkdir(parents=True, exist_ok=True)
        self.max_associations, self.retry_max = int(max_associations), float(retry_max)
        self.state = NodeState()
        self._wake, self._stopping = threading.Event(), threading.Event()
        self._server = self._sender = None

    # -- receiving ------------------------------------------------------------------------------------------
    def _ae(self):
        from pynetdicom import ALL_TRANSFER_SYNTAXES, AE
        from pynetdicom.presentation import AllStoragePresentationContexts
        from pynetdicom.sop_class import Verification

        ae = AE(ae_title=self.ae_title)
        for cx in AllStoragePresentationContexts:
            ae.add_supported_context(cx.abstract_syntax, ALL_TRANSFER_SYNTAXES)
        ae.add_supported_context(Verification)
        ae.maximum_associations = self.max_associations
        if self.accept:
            ae.require_calling_aet = self.accept
        return ae

    def _failure(self, status: int, why: str, kind: str):
        from pydicom.dataset import Dataset

        self.state.failed[kind] = self.state.failed.get(kind, 0) + 1
        out = Dataset()
        out.Status = status
        out.ErrorComment = why[:64]
        LOG.warning("C-STORE answered 0x%04X: %s", status, why)
        return out

    def handle_store(self, event) -> Any:
        """One C-STORE: decide the image, spool its results; the status (see the module docstring)."""
        self.state.received += 1
        try:
            ds = event.dataset
            ds.file_meta = event.file_meta
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
        except Exception as exc:  # noqa: BLE001 - a dataset pydicom cannot even re-encode
            return self._failure(CANNOT_UNDERSTAND, f"unreadable dataset ({type(exc).__name__})", "unreadable")
        missing = missing_references(ds)
        if missing:
            return self._failure(CANNOT_UNDERSTAND, f"no {', '.join(missing)}", "unreadable")
        name = f"{ds.SOPInstanceUID}.dcm"
        try:
            arr = self.service.image(data, name)
        except (BadImageError, ImageTooLargeError, ImageTooSmallError, ValueError) as exc:
            return self._failure(CANNOT_UNDERSTAND, str(exc).split(": ", 1)[-1], "unreadable")
        calling = event.assoc.requestor.ae_title
        try:
            answer = self.service.predict(arr, name, client=f"dicom:{calling}", source="dicom", data=data)
        except Refused as exc:
            return self._failure(UNABLE_TO_PROCESS, str(exc), "refused")
        except LogUnavailable as exc:
            return self._failure(OUT_OF_RESOURCES, f"decision log unavailable: {exc.reason}", "log")
        self.state.decided += 1
        if self.destination is None:
            return 0x0000
        mask = picture = None
        if self.service.op.segmentation:
            mask = self.service.lesion_mask(arr)
        if self.pictures:
            picture = self._picture(arr, mask)
        header = ds.copy()
        for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
            if tag in header:
                delattr(header, tag)
        try:
            objects = self.results.objects(header, answer, mask, picture)
            for obj in objects:
                self._spool(obj)
        except Exception as exc:  # noqa: BLE001 - a source highdicom cannot reference: said, never a crash
            return self._failure(UNABLE_TO_PROCESS, f"results not made ({type(exc).__name__}: {exc})", "results")
        self._wake.set()
        return 0x0000

    def _picture(self, arr: np.ndarray, mask: np.ndarray | None):
        if mask is not None:
            from .segmentation import overlay

            return overlay(arr, mask), "lesion outline"
        from PIL import Image

        shown = self.service.explain_png(arr)
        if shown is None:
            return None
        return np.asarray(Image.open(io.BytesIO(shown[0])).convert("RGB")), "saliency of p(malignant)"

    def _spool(self, obj) -> Path:
        from ..io import atomic_write_with

        path = self.spool / f"{time.time_ns():020d}_{obj.SOPInstanceUID}.dcm"
        atomic_write_with(path, lambda tmp: obj.save_as(tmp, enforce_file_format=True))
        return path

    # -- sending --------------------------------------------------------------------------------------------
    def pending(self) -> list[Path]:
        """The results not yet accepted by the destination, oldest first."""
        return sorted(p for p in self.spool.glob("*.dcm") if p.is_file())

    def _send_loop(self) -> None:
        pause = 1.0
        while not self._stopping.is_set():
            files = self.pending()
            if not files:
                self._wake.wait(5.0)
                self._wake.clear()
                continue
            if self._send(files):
                pause = 1.0
            else:
                self._stopping.wait(pause)
                pause = min(pause * 2, self.retry_max)

    def _send(self, files: list[Path]) -> bool:
        """Send ``files`` on one association; False when the destination could not be reached."""
        import pydicom
        from pynetdicom import AE
        from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

        d = self.destination
        ae = AE(ae_title=self.ae_title)
        for uid in RESULT_CLASSES:
            ae.add_requested_context(uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title)
        if not assoc.is_established:
            self.state.last_send_error = f"no association with {d.ae_title}@{d.host}:{d.port}"
            LOG.warning("%s; %d result(s) kept in %s", self.state.last_send_error, len(files), self.spool)
            return False
        try:
            for path in files:
                if self._stopping.is_set():
                    break
                status = assoc.send_c_store(pydicom.dcmread(path))
                code = getattr(status, "Status", None)
                if code is None:  # the association broke: try again later
                    self.state.last_send_error = f"no answer from {d.ae_title} sending {path.name}"
                    return False
                if code == 0x0000 or 0xB000 <= code <= 0xBFFF:  # success, or a warning: stored
                    path.unlink()
                    self.state.sent += 1
                elif 0xA700 <= code <= 0xA7FF:  # out of resources: later
                    self.state.last_send_error = f"{d.ae_title} out of resources (0x{code:04X})"
                    return False
                else:
                    target = self.spool / "refused" / path.name
                    os.replace(path, target)
                    target.with_suffix(".txt").write_text(f"{d.ae_title} answered 0x{code:04X}\n")
                    self.state.refused_by_destination += 1
            self.state.last_send_error = None
            return True
        finally:
            assoc.release()

    # -- life -----------------------------------------------------------------------------------------------
    def start(self) -> "DicomNode":
        from pynetdicom import evt

        self._server = self._ae().start_server((self.host, self.port), block=False,
                                               evt_handlers=[(evt.EVT_C_STORE, self.handle_store)])
        # An association's thread must not keep a stopped node alive (a peer that never closes its connection
        # held the process until the network timeout: socketserver's request threads are joined at exit).
        self._server.daemon_threads = True
        if self.destination is not None:
            self._sender = threading.Thread(target=self._send_loop, name="riskcl-dicom-sender", daemon=True)
            self._sender.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        self._wake.set()
        if self._server is not None:
            for assoc in list(getattr(self._server, "active_associations", [])):
                assoc.abort()  # nothing is lost: a store is acknowledged only once its image is decided
            self._server.shutdown()
        if self._sender is not None:
            self._sender.join(timeout=30)

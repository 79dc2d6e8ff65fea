"""The triage service's logic, independent of the web framework: a model (run or export folder) behind a micro
batcher, the decision of one image at the operating point certified for what it carries, the outline or saliency,
the service's description, and the decision log's record of each answer (torch-free for an export folder)."""
from __future__ import annotations

import contextlib
import json
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .._checks import check_method
from ..data.decoding import decode_bytes
from ..data.encode_metadata import MetadataValueError
from ..data.encoding import METADATA_ONLY
from ..decision import OperatingPoint
from ..defaults import BORDERLINE, MAX_BATCH, MAX_WAIT_MS, SALIENCY
from .batching import MicroBatcher
from .decision_log import DecisionLog, decision_fields, new_request_id
from .prediction_csv import ERROR
from .notices import NOTICE, SEGMENTATION_NOTICE, operating_point_text
from .scoring import decision_rows, open_scorer

class Refused(ValueError):
    """A request riskcl will not decide (metadata it cannot read, a non-finite score): answered 422."""


class TriageService:
    """A served model: a run folder (PyTorch: probabilities, the input check, saliency) or an export folder (ONNX
    Runtime alone: probabilities; no input check or saliency, said so in ``/model`` and on the page).

    Concurrent predictions are batched (:class:`riskcl.deploy.batching.MicroBatcher`); the run folder's model is
    used by one call at a time (saliency hooks into it), an ONNX Runtime session by several."""

    def __init__(self, target: str | Path, method: str = SALIENCY, allow_uncertified: bool = False,
                 borderline: float = BORDERLINE, threads: int | None = None, max_batch: int = MAX_BATCH,
                 max_wait_ms: float = MAX_WAIT_MS, log: DecisionLog | None = None,
                 on_batch: Callable[[int], None] | None = None) -> None:
        check_method(method)
        self.target, self.log = Path(target), log
        started = time.perf_counter()
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
        self.batcher = MicroBatcher(self._score, max_batch, max_wait_ms, on_batch)
        self.load_seconds = time.perf_counter() - started
        self.encoding = encoding
        self.metadata = {**description, "operating_point_text": operating_point_text(self.op),
                         "notice": SEGMENTATION_NOTICE if self.op.segmentation else NOTICE,
                         "borderline": self.borderline, "certified": self.op.certified or not self.op.calibrated,
                         "input_check": check_text, "input_check_available": self.input_check is not None,
                         "saliency": not saliency_note, "saliency_note": saliency_note,
                         "batching": {"max_batch": self.batcher.max_batch,
                                      "max_wait_ms": 1000 * self.batcher.max_wait}}

    def image(self, data: bytes, name: str) -> np.ndarray:
        """An upload decoded as the model's run decoded its images (a DICOM instance under the run's policy); the
        pixel limits (too large, too small) are the decoder's."""
        return decode_bytes(data, name, getattr(self.scorer, "dicom", None))

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

    def predict(self, arr: np.ndarray, name: str, metadata: dict | None = None, client: str = "anonymous",
                source: str = "api", data: bytes = b"") -> dict[str, Any]:
        """The answer for one image, recorded in the decision log before it is given (:class:`LogUnavailable`
        when it cannot be: no answer then); ``metadata``: a fusion model's ``{column: value}`` (missing: none
        sent); ``client``, ``source``, ``data`` (the upload's bytes, for its keyed hash): what the log records."""
        answer, point = self._answer(arr, name, metadata)
        answer["request_id"] = new_request_id()
        if self.log is not None:
            self.log.record(decision_fields(
                request_id=answer["request_id"], client=client, source=source, model_sha256=self.scorer.identity,
                point=point, row=answer, metadata=metadata, width=arr.shape[1], height=arr.shape[0],
                image_hmac=self.log.image_hash(data) if data else None, unusual=answer.get("unusual")))
        return answer

    def _answer(self, arr: np.ndarray, name: str, metadata: dict | None) -> tuple[dict[str, Any], OperatingPoint]:
        if self.op.segmentation:
            return self._outline(arr, name), self.op
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
                    "metadata_inputs": pattern} if self.metadata_columns else {})}, point

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

    def lesion_mask(self, arr: np.ndarray) -> np.ndarray:
        """A segmentation model's lesion mask at the operating point, on the image's own pixels."""
        from .segmentation import to_image_grid

        probs, _ = self.batcher((arr, None))
        return to_image_grid(np.asarray(probs, dtype=np.float32), *arr.shape[:2]) >= self.op.threshold

    def outline_png(self, arr: np.ndarray) -> tuple[bytes, str]:
        """The image beside itself with the lesion's outline at the operating point, as PNG."""
        import io

        from PIL import Image

        from .segmentation import overlay

        mask = self.lesion_mask(arr)
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



"""riskcl's decisions as DICOM objects a PACS files beside the source image (highdicom).

For each decided DICOM image:

* a **Comprehensive SR** (TID 1500 measurement report) whose one measurement group references the source image
  (study, series, SOP instance and, for a multi-frame source, the frame decided) and carries the decision as a
  coded qualitative evaluation, p(malignant) and the threshold as measurements (a segmentation model: the lesion's
  share of the image and the uncertain share), and, as the algorithm's parameters, the operating point in words,
  the model's SHA-256 and the research-use notice;
* for a segmentation model, a **Segmentation** (binary, the lesion mask on the source image's pixel grid) of a
  single-frame source;
* where the model has a picture to show (a segmentation model's outline; a run folder's saliency panel), a
  **Secondary Capture** of it.

New objects get new UIDs (a study's results share one series per kind and per riskcl process); the source's
patient and study modules are copied (a PACS files results by patient), and nothing else of its header is: the
objects carry no value the source did not. Codes of riskcl's own concepts use the private coding scheme
:data:`SCHEME`.
"""
from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

SCHEME = "99RISKCL"  # a private coding scheme (DICOM PS3.16: designators beginning with 99)
SERIES_NUMBER = {"sr": 9901, "seg": 9902, "sc": 9903}
MANUFACTURER = "riskcl"
DECISION_MEANING = {"refer": "Refer for review", "clear": "No referral",
                    "segmented": "Lesion outlined", "unusual": "Unusual input"}


def _code(value: str, meaning: str):
    import highdicom as hd

    return hd.sr.CodedConcept(value=value, scheme_designator=SCHEME, meaning=meaning)


def read_source(path: str | os.PathLike | bytes):
    """The header of a DICOM source (no pixels): what its results reference and copy."""
    import io

    import pydicom

    return pydicom.dcmread(io.BytesIO(path) if isinstance(path, (bytes, bytearray)) else os.fspath(path),
                           stop_before_pixels=True, force=True)


def decided_frame(source) -> int | None:
    """The 1-based frame riskcl decided of a multi-frame source (its middle one, as the decoder takes), else None."""
    frames = int(getattr(source, "NumberOfFrames", 1) or 1)
    return frames // 2 + 1 if frames > 1 else None


def missing_references(source) -> list[str]:
    """The attributes a result needs of its source and the source lacks (an empty list: it can be referenced)."""
    return [k for k in ("SOPClassUID", "SOPInstanceUID", "StudyInstanceUID", "SeriesInstanceUID")
            if not str(getattr(source, k, "") or "").strip()]


class DicomResults:
    """Builds (and, with ``folder``, writes) the DICOM results of a scorer's decisions.

    ``model_sha256``, ``point_text`` (the operating point in words) and ``notice`` are what every SR states;
    ``segmentation``: the scorer is a segmentation model."""

    def __init__(self, model_sha256: str, point_text: str, notice: str, segmentation: bool,
                 folder: str | os.PathLike | None = None, model_name: str = "riskcl model") -> None:
        from .. import __version__

        self.sha, self.point_text, self.notice, self.segmentation = model_sha256, point_text, notice, segmentation
        self.version, self.model_name = __version__, model_name
        self.folder = None if folder is None else Path(folder)
        self._series: dict[tuple[str, str], str] = {}
        self._instance = 0
        self._lock = threading.Lock()
        if self.folder is not None:
            from ..io import make_folder

            make_folder(self.folder, "--dicom-out")

    @classmethod
    def of_scorer(cls, scorer, folder: str | os.PathLike | None = None) -> "DicomResults":
        from .notices import NOTICE, SEGMENTATION_NOTICE, operating_point_text

        seg = bool(scorer.op.segmentation)
        return cls(scorer.identity, operating_point_text(scorer.op), SEGMENTATION_NOTICE if seg else NOTICE, seg,
                   folder, model_name=f"riskcl {scorer.kind}")

    def _uids(self, source, kind: str) -> tuple[str, str, int]:
        from pydicom.uid import generate_uid

        with self._lock:
            key = (str(source.StudyInstanceUID), kind)
            if key not in self._series:
                self._series[key] = generate_uid()
            self._instance += 1
            return self._series[key], generate_uid(), self._instance

    def _algorithm(self):
        import highdicom as hd

        return hd.sr.AlgorithmIdentification(
            name="riskcl", version=self.version,
            parameters=[f"model SHA-256 {self.sha}", f"operating point: {self.point_text}"[:1024],
                        self.notice[:1024]])

    def structured_report(self, source, row: dict[str, Any]):
        """The SR of one decision (``row``: a prediction row or the service's answer) about ``source``."""
        import highdicom as hd
        from pydicom.sr.codedict import codes
        from pydicom.uid import generate_uid

        series, sop, number = self._uids(source, "sr")
        frame = decided_frame(source)
        decision = str(row["decision"])
        measurements = [("p-malignant", "Probability of malignancy", row.get("p_malignant")),
                        ("threshold", "Decision threshold on p(malignant)", row.get("threshold"))]
        if self.segmentation:
            measurements = [("lesion-share", "Share of the image outlined as lesion", row.get("lesion_share")),
                            ("uncertain-share", "Share of the outline between the calibrated threshold and 0.5",
                             row.get("uncertain_share")),
                            ("threshold", "Decision threshold on p(lesion)", row.get("threshold"))]
        group = hd.sr.MeasurementsAndQualitativeEvaluations(
            tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="riskcl triage"),
            algorithm_id=self._algorithm(),
            measurements=[hd.sr.Measurement(name=_code(value, meaning), value=float(v), unit=codes.UCUM.NoUnits)
                          for value, meaning, v in measurements if v is not None and v != ""],
            qualitative_evaluations=[hd.sr.QualitativeEvaluation(
                name=_code("triage-decision", "Triage decision"),
                value=_code(decision, DECISION_MEANING.get(decision, decision)))],
            source_images=[hd.sr.SourceImageForMeasurementGroup.from_source_image(
                source, referenced_frame_numbers=None if frame is None else [frame])])
        observer = hd.sr.ObservationContext(observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device,
            observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
                uid=_device_uid(self.sha), name="riskcl", manufacturer_name=MANUFACTURER, model_name=self.model_name)))
        report = hd.sr.MeasurementReport(observation_context=observer,
                                         procedure_reported=codes.LN.ImagingProcedure if hasattr(
                                             codes.LN, "ImagingProcedure") else codes.SCT.ImagingProcedure,
                                         imaging_measurements=[group])
        return hd.sr.ComprehensiveSR(evidence=[source], content=report[0], series_instance_uid=series,
                                     series_number=SERIES_NUMBER["sr"], sop_instance_uid=sop, instance_number=number,
                                     manufacturer=MANUFACTURER, is_complete=True, series_description="riskcl triage")

    def segmentation_object(self, source, mask: np.ndarray):
        """The binary Segmentation of ``mask`` (the source's rows x columns) on a single-frame source."""
        import highdicom as hd
        from pydicom.sr.codedict import codes

        series, sop, number = self._uids(source, "seg")
        description = hd.seg.SegmentDescription(
            segment_number=1, segment_label="lesion",
            segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
            segmented_property_type=codes.SCT.Lesion, algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=hd.AlgorithmIdentificationSequence(
                name="riskcl", family=codes.cid7162.ArtificialIntelligence, version=self.version))
        seg = hd.seg.Segmentation(
            source_images=[source], pixel_array=np.asarray(mask, bool)[None].astype(np.uint8),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=[description],
            series_instance_uid=series, series_number=SERIES_NUMBER["seg"], sop_instance_uid=sop,
            instance_number=number, manufacturer=MANUFACTURER, manufacturer_model_name=self.model_name,
            software_versions=f"riskcl {self.version}", device_serial_number=self.sha[:16],
            series_description="riskcl lesion outline", omit_empty_frames=False)
        if "FrameOfReferenceUID" not in seg and "PatientOrientation" not in seg:  # type 2C without a frame of reference
            seg.PatientOrientation = source.get("PatientOrientation", "") or _orientation(source)
        return seg

    def secondary_capture(self, source, picture: np.ndarray, what: str):
        """A Secondary Capture of an RGB ``picture`` (the outline or saliency panel) derived from ``source``."""
        import highdicom as hd

        series, sop, number = self._uids(source, "sc")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source, pixel_array=np.ascontiguousarray(picture, dtype=np.uint8),
            photometric_interpretation="RGB", bits_allocated=8, coordinate_system="PATIENT",
            series_instance_uid=series, series_number=SERIES_NUMBER["sc"], sop_instance_uid=sop,
            instance_number=number, manufacturer=MANUFACTURER, series_description=f"riskcl {what}"[:64],
            patient_orientation=("L", "F"))  # highdicom wants one; replaced by the source's below
        # The picture's rows and columns run as the source's: its Patient Orientation (type 2: empty if unknown).
        sc.PatientOrientation = source.get("PatientOrientation", "") or _orientation(source)
        sc.Laterality = source.get("Laterality", "")  # type 2C: the source's paired body part side, if it says
        return sc

    def objects(self, source, row: dict[str, Any], mask: np.ndarray | None = None,
                picture: tuple[np.ndarray, str] | None = None) -> list:
        """Every result of one decision: the SR, and the Segmentation / Secondary Capture when given."""
        source = _with_type2(source)
        out = [self.structured_report(source, row)]
        if mask is not None and decided_frame(source) is None:
            out.append(self.segmentation_object(source, mask))
        if picture is not None:
            out.append(self.secondary_capture(source, *picture))
        return out

    def write(self, name: str, objects: list) -> list[Path]:
        """Write ``objects`` (of input ``name``) into the folder, atomically, as ``<stem>_<kind>.dcm``."""
        from ..io import atomic_write_with, distinct_stems

        stem, = distinct_stems([name], always=True)
        kinds = {"1.2.840.10008.5.1.4.1.1.88.33": "sr", "1.2.840.10008.5.1.4.1.1.66.4": "seg"}
        written = []
        for ds in objects:
            path = self.folder / f"{stem}_{kinds.get(str(ds.SOPClassUID), 'sc')}.dcm"
            atomic_write_with(path, lambda tmp, ds=ds: ds.save_as(tmp, enforce_file_format=True))
            written.append(path)
        return written


TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
         "ReferringPhysicianName", "StudyID", "AccessionNumber")  # patient / study attributes a result must carry


def _with_type2(source):
    """A copy of the source's header with its missing type 2 patient and study attributes present and empty (as
    DICOM allows when a value is unknown): the results carry nothing the source did not."""
    out = source.copy()
    for keyword in TYPE2:
        if keyword not in out:
            setattr(out, keyword, "")
    return out


def _orientation(source) -> list[str] | str:
    """The Patient Orientation (row, column directions) of a source with Image Orientation (Patient), else ''."""
    iop = source.get("ImageOrientationPatient")
    if not iop or len(iop) != 6:
        return ""
    letters = []
    for cosines in (iop[:3], iop[3:]):
        axis = int(np.argmax(np.abs(cosines)))
        letters.append(("L", "P", "H")[axis] if float(cosines[axis]) > 0 else ("R", "A", "F")[axis])
    return letters


def _device_uid(sha: str) -> str:
    """A stable UID of the model (from its SHA-256), so that every SR of one model names one device."""
    return "2.25." + str(int(sha[:30], 16))


DECIDED = ("refer", "clear", "segmented")


def pictures(scorer, mask_dir: str | os.PathLike | None):
    """What a result's Secondary Capture shows for input ``name`` (None: nothing): a segmentation model's outline
    overlay (from ``mask_dir``), or a run folder's saliency panel (an export, an adopted model and the
    metadata-only reference have none)."""
    if scorer.op.segmentation:
        if mask_dir is None:
            return None
        from PIL import Image

        from .segmentation import mask_files

        return lambda name: (np.asarray(Image.open(mask_files(Path(mask_dir), name)[1]).convert("RGB")),
                             "lesion outline")
    if scorer.kind != "run":
        return None
    from .explain import saliency_panel, target_layer

    try:
        target_layer(scorer.model, scorer.op.image_size)
    except ValueError:  # no layer to explain (an adopted model, the metadata-only reference)
        return None
    from ..data.decoding import decode_rgb
    from ..defaults import SALIENCY

    def picture(name: str):
        return saliency_panel(scorer.model, decode_rgb(name, getattr(scorer, "dicom", None)), scorer.op.image_size,
                              scorer.taxonomy, SALIENCY)[0], "saliency of p(malignant)"
    return picture


class ResultsSink:
    """A prediction sink (``predict --dicom-out``) that writes the DICOM results of each decided DICOM input, then
    hands its rows on to ``inner`` (the CSV): a rerun rewrites the results of rows the CSV had not received."""

    def __init__(self, inner, results: DicomResults, picture=None) -> None:
        self.inner, self.results, self.picture = inner, results, picture
        self.done = inner.done
        self.written: list[Path] = []
        self.not_dicom = 0
        self.unreferenced: list[str] = []

    def write(self, rows) -> None:
        from PIL import Image

        from ..data.dicom import is_dicom_file

        for row in rows:
            name = str(row["image"])
            if row.get("decision") not in DECIDED:
                continue
            if not is_dicom_file(name):
                self.not_dicom += 1
                continue
            source = read_source(name)
            missing = missing_references(source)
            if missing:
                self.unreferenced.append(f"{name} (no {', '.join(missing)})")
                continue
            mask = np.asarray(Image.open(row["mask"])) > 0 if row.get("mask") else None
            picture = self.picture(name) if self.picture is not None else None
            self.written += self.results.write(name, self.results.objects(source, row, mask, picture))
        self.inner.write(rows)

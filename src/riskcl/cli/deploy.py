"""Commands after training: predict, export, card, explain, serve."""
from __future__ import annotations

import argparse

from ..defaults import BORDERLINE, MAX_BATCH, MAX_WAIT_MS, MIN_SENSITIVITY, MIN_SPECIFICITY, N_BOOT, SALIENCY
from ..deploy.decision_log import DEFAULT_LOG, DEFAULT_MAX_MB
from .command import Command


def _unfinished_note(run_dir: str, allow: bool) -> None:
    from ..experiment.folder import RunFolder

    note = RunFolder(run_dir).require_finished(allow)
    if note:
        print(note)


def _add_point(p: argparse.ArgumentParser, manual: bool = True) -> None:
    """The operating-point options every command that decides shares."""
    if manual:
        g = p.add_mutually_exclusive_group()
        g.add_argument("--threshold", type=float, default=None,
                       help="decide at this p(malignant) threshold instead of the run's operating point (no guarantee)")
        g.add_argument("--default-rule", action="store_true",
                       help="ignore calibration.json: the 0.5 default rule (no guarantee)")
        g.add_argument("--calibrated", action="store_true",
                       help="require calibration.json (the default uses it whenever it exists)")
    p.add_argument("--allow-uncertified", action="store_true",
                   help="use a calibration that certified no threshold (said so on every output)")


def _calibrated(a: argparse.Namespace) -> bool | None:
    return False if a.default_rule else True if a.calibrated else None


def _point_line(op) -> str:
    return f"operating point: {op.describe()}"


def _add_predict(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_OR_EXPORT", help="a run folder (PyTorch) or an export folder (ONNX "
                   "Runtime, no PyTorch needed)")
    p.add_argument("images", nargs="+", help="image files, folders (every image below) or quoted globs")
    p.add_argument("--out", default=None, help="CSV written as the images are scored; a rerun with the same --out "
                   "skips the images already scored (default: the CSV goes to standard output); an existing file "
                   "is used only when it is a riskcl prediction CSV, unless --force")
    p.add_argument("--force", action="store_true", help="start --out over, even if it is not a prediction CSV")
    p.add_argument("--masks", default=None, metavar="DIR", help="segmentation: folder for each image's mask PNG and "
                   "outline overlay (default: <out>_masks beside --out)")
    _add_point(p)
    p.add_argument("--metadata", default=None,
                   help="CSV with an `image` column and the group column of a per-group calibration, or a fusion "
                   "model's metadata columns (images without a row: metadata missing)")
    p.add_argument("--argmax", action="store_true", help="decide by the fine-class argmax (the paper's rule)")
    p.add_argument("--allow-unfinished", action="store_true", help="use an unfinished run's best weights so far")
    p.add_argument("--batch-size", type=int, default=64, help="images decoded and scored at a time (bounds memory)")
    p.add_argument("--threads", type=int, default=None,
                   help="cores used (default: the usable cores): an export scores this many batches at once, one "
                        "thread each; a run folder: PyTorch's threads (default: PyTorch's)")
    p.add_argument("--log", default=None, metavar="FILE", help="append one chained line per decision to this decision "
                   "log (the format riskcl serve writes; riskcl log verify FILE checks it)")
    p.add_argument("--dicom-out", default=None, metavar="DIR", help="for each decided DICOM input, its DICOM "
                   "results in DIR: a Structured Report (decision, p(malignant), the operating point, the model's "
                   "SHA-256), a Segmentation for a segmentation model, a Secondary Capture of the outline or "
                   "saliency (see docs/dicom.md)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


UNREADABLE_EXIT = 3  # predict finished, but some inputs could not be read or decided (their rows say why)


def _predict(a: argparse.Namespace) -> int:
    import sys

    from ..deploy.scoring import is_export, predict_files

    if not is_export(a.run_dir):
        _unfinished_note(a.run_dir, a.allow_unfinished)
    log = sys.stderr if a.out is None else sys.stdout  # stdout carries the CSV when no --out is given
    result = predict_files(a.run_dir, a.images, a.out or "-", calibrated=_calibrated(a), threshold=a.threshold,
                           metadata=a.metadata, rule="argmax" if a.argmax else "superclass",
                           allow_unfinished=a.allow_unfinished, allow_uncertified=a.allow_uncertified,
                           force=a.force, batch_size=a.batch_size, threads=a.threads, progress=not a.quiet,
                           collect=False, mask_dir=a.masks, log=a.log, dicom_out=a.dicom_out)
    s = result.summary
    print(_point_line(result.op), file=log)
    what = "referred: no lesion found or an uncertain outline" if result.op.segmentation else "referred"
    print(f"{s.scored} image(s) scored ({s.referred} {what})" + (f", {s.skipped} already in {a.out}" if s.skipped
                                                                   else "")
          + (f", {len(s.unreadable)} unreadable (rows with decision 'unreadable' say why): "
             + ", ".join(s.unreadable[:5]) + (" ..." if len(s.unreadable) > 5 else "") if s.unreadable else "")
          + (f", {len(s.errors)} refused (rows with decision 'error' say why): "
             + ", ".join(s.errors[:5]) + (" ..." if len(s.errors) > 5 else "") if s.errors else ""),
          file=log)
    if s.dicom is not None:
        d = s.dicom
        print(f"wrote {len(d.written)} DICOM object(s) to {a.dicom_out}"
              + (f"; {d.not_dicom} input(s) not DICOM (no DICOM result)" if d.not_dicom else "")
              + (f"; {len(d.unreferenced)} DICOM input(s) without the UIDs a result references: "
                 + ", ".join(d.unreferenced[:3]) if d.unreferenced else ""), file=log)
    if a.out:
        print(f"wrote {a.out}")
    return UNREADABLE_EXIT if s.unreadable or s.errors else 0


PREDICT = Command("predict", "predict image files, folders or globs with a run or an export (decision at its "
                  "operating point)",
                  _add_predict, _predict)


def _add_export(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--format", choices=["onnx", "torchscript"], default="onnx")
    p.add_argument("--out", required=True, help="folder for the model, riskcl_export.json, decode.py and README.md "
                   "(built aside and swapped in whole)")
    p.add_argument("--check-images", nargs="*", default=None, help="images for the parity check (default: the "
                   "run's test split)")
    p.add_argument("--check-limit", type=int, default=256, help="test images used by the parity check")
    _add_point(p)


def _export(a: argparse.Namespace) -> int:
    from .._checks import check_int
    from ..deploy.export import export_run

    check_int("--check-limit", a.check_limit, minimum=1)
    meta = export_run(a.run_dir, a.out, a.format, a.check_images, a.check_limit,
                      calibrated=_calibrated(a), threshold=a.threshold,
                      allow_uncertified=a.allow_uncertified)
    p, op = meta["parity"], meta["operating_point"]
    print(f"exported {a.out}/{meta['file']} ({a.format}): input uint8 (N, H, W, 3) RGB, outputs "
          f"{', '.join(o['name'] for o in meta['outputs'])}\n  operating point: {op['how']}\n"
          + (f"  parity against riskcl predict, {p['runtime']}: max |p(lesion) difference| "
             f"{p['max_abs_diff_p_lesion']:.2e} per pixel, {p['mask_pixel_flips']} mask pixel flips beyond ties "
             f"({p['mask_pixel_ties']} within {p['tolerance']:g} of the threshold)\n" if "checks" not in p else
             "".join(f"  parity against {c['reference']}, {p['runtime']}: max |p(malignant) difference| "
                     f"{c['max_abs_diff_p_malignant']:.2e}, {c['decision_flips']} decision flips, "
                     f"{c['label_flips']} label flips\n" for c in p["checks"]))
          + f"wrote {a.out}/riskcl_export.json, README.md and decode.py")
    return 0


EXPORT = Command("export", "export a run as ONNX / TorchScript with its preprocessing and operating point",
                 _add_export, _export)


def _add_card(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="MODEL_CARD.md path (default: in the run folder)")
    p.add_argument("--export", default=None, help="an export folder to describe (default: RUN/export if present)")
    p.add_argument("--bootstrap", type=int, default=N_BOOT, help="bootstrap resamples for the CIs")
    p.add_argument("--min-sensitivity", type=float, default=MIN_SENSITIVITY,
                   help="flag the model not fit for use under this test sensitivity at its operating point")
    p.add_argument("--min-specificity", type=float, default=MIN_SPECIFICITY,
                   help="flag the model not fit for use under this test specificity at its operating point")
    _add_point(p, manual=False)


def _card(a: argparse.Namespace) -> int:
    from ..deploy.card import CARD_HTML, build_card

    path = build_card(a.run_dir, a.out, a.bootstrap, a.export, allow_uncertified=a.allow_uncertified,
                      min_sensitivity=a.min_sensitivity, min_specificity=a.min_specificity)
    print(f"wrote {path} and {path.parent / CARD_HTML}")
    return 0


CARD = Command("card", "write the run's model card (MODEL_CARD.md and model_card.html)", _add_card, _card)


def _add_explain(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("images", nargs="*", help="image files (or --type-ii for the test split's fatal errors)")
    p.add_argument("--out", default=None, help="folder for the overlays (required with IMAGES)")
    p.add_argument("--method", default=SALIENCY, help="gradcam, gradcam++, xgradcam, eigencam or layercam")
    p.add_argument("--type-ii", action="store_true", help="the gallery of the test split's Type II errors, written "
                   "to RUN/gallery/ (read by `riskcl report` and `riskcl card`)")
    p.add_argument("--cap", type=int, default=16, help="at most this many Type II cases in the gallery")


def _explain(a: argparse.Namespace) -> int:
    from .._checks import check_method
    from ..deploy.explain import explain_files, explain_type_ii

    check_method(a.method)

    if a.type_ii:
        g = explain_type_ii(a.run_dir, a.cap, a.method)
        print(f"{g['shown']} of {g['type_ii_total']} Type II error(s) at threshold {g['threshold']:.4f}: "
              f"{a.run_dir}/gallery/" + (f" ({g['blank_maps']} blank map(s))" if g["blank_maps"] else ""))
    if a.images:
        if not a.out:
            raise ValueError("--out is required with IMAGES (the folder for the overlays)")
        for r in explain_files(a.run_dir, a.images, a.out, a.method):
            print(f"{r['image']}: {r['label']} (p_malignant={r['p_malignant']:.3f}) -> {r['panel']}"
                  + (f"  [{r['note']}]" if r["note"] else ""))
    if not a.images and not a.type_ii:
        raise ValueError("nothing to explain: give IMAGES (with --out) or --type-ii")
    return 0


EXPLAIN = Command("explain", "saliency overlays (Grad-CAM) for image files or the test split's Type II errors",
                  _add_explain, _explain)


def _add_serve(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_OR_EXPORT", help="a run folder (PyTorch, with saliency and the input "
                   "check) or an export folder (ONNX Runtime alone)")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-upload-mb", type=float, default=20.0, help="larger uploads get 413")
    p.add_argument("--method", default=SALIENCY, help="saliency method of /explain")
    p.add_argument("--borderline", type=float, default=BORDERLINE,
                   help="|p(malignant) - threshold| at or under which the page shows a borderline result")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of ONNX Runtime / PyTorch")
    p.add_argument("--max-batch", type=int, default=MAX_BATCH, help="concurrent images scored in one model call")
    p.add_argument("--max-wait-ms", type=float, default=MAX_WAIT_MS,
                   help="how long the first image of a batch waits for others")
    _add_point(p, manual=False)
    g = p.add_argument_group("who may ask, what is recorded (see docs/deploy.md: Security)")
    g.add_argument("--tokens", default=None, metavar="FILE", help="bearer tokens of named clients (riskcl serve-token "
                   "add NAME --tokens FILE); required to listen beyond loopback")
    g.add_argument("--no-auth", action="store_true", help="listen beyond loopback without tokens (said on the page "
                   "and in /model)")
    g.add_argument("--log", default=DEFAULT_LOG, metavar="FILE", help="the decision log: one chained JSON line per "
                   "decision (default: %(default)s in the working folder; --log '' for none); `riskcl log verify "
                   "FILE` checks it")
    g.add_argument("--log-max-mb", type=float, default=DEFAULT_MAX_MB, help="rotate the log at this size")
    g.add_argument("--log-key", default=None, metavar="FILE", help="the key of the images' keyed hashes (default: "
                   "<log>.key, created on first use)")
    g.add_argument("--rate-limit", type=int, default=None, metavar="N", help="requests per minute per client (429)")
    g.add_argument("--max-concurrent", type=int, default=None, metavar="N",
                   help="concurrent requests per client (429)")
    g.add_argument("--allow-origin", nargs="+", default=[], metavar="ORIGIN", help="CORS origins allowed (none: no "
                   "CORS)")
    g.add_argument("--metrics-public", action="store_true", help="/metrics without a token")
    g.add_argument("--ssl-certfile", default=None, help="HTTPS: the certificate (PEM), with --ssl-keyfile")
    g.add_argument("--ssl-keyfile", default=None, help="HTTPS: the certificate's private key (PEM)")


def _serve(a: argparse.Namespace) -> int:
    from ..deploy.serve import ServiceOptions, serve

    options = ServiceOptions(tokens=a.tokens, no_auth=a.no_auth, log=a.log, log_max_mb=a.log_max_mb,
                             log_key=a.log_key, rate_per_minute=a.rate_limit, max_concurrent=a.max_concurrent,
                             allow_origin=tuple(a.allow_origin), metrics_public=a.metrics_public)
    serve(a.run_dir, a.host, a.port, a.max_upload_mb, a.method, a.allow_uncertified, a.borderline, a.threads,
          a.max_batch, a.max_wait_ms, options, a.ssl_certfile, a.ssl_keyfile)
    return 0


def _add_serve_token(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["add", "revoke", "list"])
    p.add_argument("name", nargs="?", default=None, help="the client (add, revoke)")
    p.add_argument("--tokens", required=True, metavar="FILE", help="the token file (created by the first add)")


def _serve_token(a: argparse.Namespace) -> int:
    from ..deploy.access import add_token, list_tokens, revoke_token

    if a.action in ("add", "revoke") and not a.name:
        raise ValueError(f"serve-token {a.action} needs the client's NAME")
    if a.action == "add":
        token = add_token(a.tokens, a.name)
        print(f"token of client '{a.name}' (shown once; {a.tokens} keeps only a salted hash of it):\n{token}")
    elif a.action == "revoke":
        revoke_token(a.tokens, a.name)
        print(f"revoked client '{a.name}' (a running service refuses it from its next request)")
    else:
        for row in list_tokens(a.tokens):
            print(f"{row['client']:<24} created {row['created']}" + (f"  REVOKED {row['revoked']}" if row["revoked"]
                                                                     else ""))
    return 0


SERVE_TOKEN = Command("serve-token", "issue, revoke and list the bearer tokens of the service's clients",
                      _add_serve_token, _serve_token)


def _add_log(p: argparse.ArgumentParser) -> None:
    p.add_argument("action", choices=["verify"])
    p.add_argument("files", nargs="+", metavar="FILE", help="a decision log (its rotated files are found by name)")


def _log(a: argparse.Namespace) -> int:
    from ..deploy.decision_log import verify_log

    v = verify_log(a.files)
    if not v.ok:
        print(f"NOT INTACT after {v.lines} good line(s): {v.problem}")
        return 1
    print(f"intact: {v.lines} line(s) in {len(v.files)} file(s), chained from the first; last line seq {v.last_seq}, "
          f"hash {v.last_hash} (keep it elsewhere: lines cut from the end can only be found against it)")
    return 0


LOG = Command("log", "verify a decision log's chain (riskcl serve --log, riskcl predict --log)", _add_log, _log)


SERVE = Command("serve", "a triage web page and JSON API for a run or an export (FastAPI + uvicorn)", _add_serve,
                _serve)


def _add_dicom_node(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_OR_EXPORT", help="the model, as riskcl serve takes it")
    p.add_argument("--ae-title", default="RISKCL", help="the node's AE title (default: %(default)s)")
    p.add_argument("--host", default="127.0.0.1", help="the address to listen on")
    p.add_argument("--port", type=int, default=11112)
    p.add_argument("--accept", nargs="+", default=[], metavar="AET", help="the calling AE titles accepted (others "
                   "are rejected at association); required to listen beyond loopback")
    p.add_argument("--send-to", default=None, metavar="AET@HOST:PORT", help="where the results (SR, Segmentation, "
                   "Secondary Capture) are sent by C-STORE; without it the node decides and logs only")
    p.add_argument("--spool", default="riskcl_spool", metavar="DIR", help="results waiting for the destination "
                   "(kept until it has stored them; sent again after a restart)")
    p.add_argument("--log", default=DEFAULT_LOG, metavar="FILE", help="the decision log (as riskcl serve; '' for "
                   "none)")
    p.add_argument("--log-key", default=None, metavar="FILE", help="the key of the images' keyed hashes")
    p.add_argument("--max-associations", type=int, default=4, help="associations at once (more are rejected, "
                   "transiently)")
    p.add_argument("--no-pictures", action="store_true", help="no Secondary Capture of the outline / saliency")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads of ONNX Runtime / PyTorch")
    _add_point(p, manual=False)


def _dicom_node(a: argparse.Namespace) -> int:
    import signal
    import time

    from .._checks import check_int
    from ..deploy.dicom_node import DicomNode

    check_int("--max-associations", a.max_associations, minimum=1)
    node = DicomNode(a.run_dir, a.ae_title, a.host, a.port, a.accept, a.send_to, a.spool, a.log or None, a.log_key,
                     a.allow_uncertified, a.threads, a.max_associations, pictures=not a.no_pictures).start()
    print(f"DICOM node {a.ae_title} listening on {a.host}:{a.port}"
          + (f", accepting {', '.join(a.accept)}" if a.accept else ", accepting any calling AE title (loopback)")
          + (f"; results to {a.send_to} (spool {a.spool}, {len(node.pending())} waiting)" if a.send_to else
             "; no --send-to: decisions are logged only")
          + (f"; decision log {a.log}" if a.log else "; no decision log") + ". Ctrl-C or SIGTERM stops it.",
          flush=True)

    def stop(signum, frame):  # what a service manager sends; SIGINT may be ignored by a parent (a test runner)
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, stop)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        node.stop()
        s = node.state
        print(f"received {s.received}, decided {s.decided}, sent {s.sent} result(s), {len(node.pending())} waiting"
              + (f"; failures {s.failed}" if s.failed else ""))
    return 0


DICOM_NODE = Command("dicom-node", "a DICOM Storage SCP that triages each image it receives and sends the results "
                     "(SR, Segmentation) back to the PACS (pynetdicom)", _add_dicom_node, _dicom_node)


def _add_monitor(p: argparse.ArgumentParser) -> None:
    p.add_argument("log", nargs="+", metavar="LOG", help="the decision log (riskcl serve --log / predict --log); its "
                   "rotated files are found by name")
    p.add_argument("--reference", required=True, metavar="RUN_OR_EXPORT", help="the deployed model's run folder or "
                   "export folder (what it looked like on its calibration split)")
    p.add_argument("--outcomes", default=None, metavar="CSV", help="confirmed outcomes: request_id (or hmac_sha256) "
                   "and malignant 1 / 0 (or label), optional date")
    p.add_argument("--alpha", type=float, default=None, help="the miss rate the guarantee bounds (default: the "
                   "calibration's alpha)")
    p.add_argument("--by", default=None, metavar="COLUMN", help="the miss rate per group (a metadata column of the "
                   "log, or a column of the outcomes)")
    p.add_argument("--level", type=float, default=0.05, help="the overall false-alarm level (shared out among the "
                   "detectors), valid over any number of looks")
    p.add_argument("--out", default=None, help="folder for monitor.json, monitor.html and the curves (default: "
                   "<log>_monitor)")
    p.add_argument("--fail-on-alarm", action="store_true", help="exit 1 on any alarm (for a scheduler)")


def _monitor(a: argparse.Namespace) -> int:
    from pathlib import Path

    from .._checks import check_number
    from ..deploy.decision_log import state_file_of
    from ..deploy.monitor import load_reference, monitor, write_outputs

    check_number("--level", a.level, 0, 1, min_inclusive=False, max_inclusive=False)
    if a.alpha is not None:
        check_number("--alpha", a.alpha, 0, 1, min_inclusive=False, max_inclusive=False)
    result = monitor(a.log, load_reference(a.reference), a.outcomes, a.alpha, a.by, a.level)
    out = Path(a.out) if a.out else Path(f"{a.log[0]}_monitor")
    write_outputs(result, out, state_file_of(a.log[0]))
    for name, d in result["detectors"].items():
        bounds = "-" if not d["bounds"] else f"[{d['bounds'][0]:.3f}, {d['bounds'][1]:.3f}]"
        print(f"{name:<36} {d['cases']:>6} cases  rate {d['rate']:.3f}  bounds {bounds:<16} "
              f"{'ALARM since case ' + str(d['since']['case']) if d['alarm'] else '-'}")
    for note in result["notes"]:
        print(f"note: {note}")
    print(f"{result['state']}\nwrote {out}/monitor.json and monitor.html")
    alarmed = any(d["alarm"] for d in result["detectors"].values())
    return 1 if alarmed and a.fail_on_alarm else 0


MONITOR = Command("monitor", "whether a deployed model's certified operating point still holds, from its decision "
                  "log (anytime-valid alarms)", _add_monitor, _monitor)

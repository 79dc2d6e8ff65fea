"""The decision log: one JSON line per decision, appended, chained and verifiable (standard library only).

Clinical software must be able to say, months later, which model at which operating point gave which answer to
whom. ``riskcl serve --log FILE`` and ``riskcl predict --log FILE`` append one line per decision: the time, the
request id (returned to the client in ``X-Request-ID``), the client's name, the model's SHA-256, the operating
point (an id over its settings, the threshold, the method, whether it is certified, the input pattern), the
decision, p(malignant), the input check's flag, the metadata the caller sent, the image's size and a keyed hash of
its bytes (HMAC-SHA256 with a key kept beside the log, never in it: the log holds no pixels and no way to test a
guessed image without the key). Each line is written whole, flushed and synced before the answer leaves; a line
that cannot be written fails the request (the decision is not given without its record).

Tamper evidence: every line carries ``prev``, the SHA-256 of the line before it (of the last line of the previous
file after a rotation; ``genesis`` for the very first), and ``seq``, its number. :func:`verify_log` names the first
line that was changed, removed or reordered, across rotated files (``FILE.1``, ``FILE.2``, ... are older). Lines cut
from the very end cannot be detected from the file alone: ``riskcl log verify`` prints the last line's hash, to be
kept elsewhere as an anchor. Files are rotated by size (renamed, never rewritten).
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

GENESIS = "genesis"
DEFAULT_LOG = "riskcl_decisions.jsonl"  # beside the working folder, named at start when --log is not given
DEFAULT_MAX_MB = 64.0


class LogUnavailable(OSError):
    """The decision could not be recorded (a full disk, an unwritable file): the decision is not given.
    ``reason``: why, without the file's path (what a client may be told)."""

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


def line_hash(line: bytes | str) -> str:
    """The SHA-256 of one log line (without its newline), as the next line's ``prev`` holds it."""
    data = line.encode("utf-8") if isinstance(line, str) else line
    return hashlib.sha256(data.rstrip(b"\n")).hexdigest()


def canonical(record: Mapping[str, Any]) -> str:
    """One record as its log line: compact JSON with sorted keys (so that a reader can recompute the hash)."""
    return json.dumps(record, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def rotated(path: Path) -> list[Path]:
    """``path`` and its rotated files, oldest first (``FILE.3``, ``FILE.2``, ``FILE.1``, ``FILE``)."""
    older = []
    k = 1
    while Path(f"{path}.{k}").is_file():
        older.append(Path(f"{path}.{k}"))
        k += 1
    return [*reversed(older), *([path] if path.is_file() else [])]


def _last_line(path: Path) -> bytes | None:
    """The last whole line of a file (lines are short: the last MiB holds it)."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        fh.seek(max(0, size - 1_048_576))
        tail = fh.read()
    lines = [x for x in tail[:tail.rfind(b"\n") + 1].split(b"\n") if x.strip()]
    return lines[-1] if lines else None


def _cut_torn_tail(path: Path) -> None:
    """A crash mid-write can leave a partial last line (never a decision that was given: the answer waits for the
    line to be synced); it is cut so that the next line starts whole."""
    if not path.is_file():
        return
    size = path.stat().st_size
    with open(path, "rb+") as fh:
        fh.seek(max(0, size - 1_048_576))
        tail = fh.read()
        if tail and not tail.endswith(b"\n"):
            fh.truncate(max(0, size - len(tail)) + tail.rfind(b"\n") + 1)


def load_key(path: Path) -> bytes:
    """The keyed-hash key (created on first use: 32 random bytes, hex, readable by the owner only)."""
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
    text = path.read_text(encoding="utf-8").strip()
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) < 16:
        raise ValueError(f"{path}: not a riskcl log key (expected at least 32 hex digits)")
    return key


def image_hmac(data: bytes, key_path: str | os.PathLike) -> str:
    """The keyed hash a decision log records for an image's bytes (``hmac_sha256``), with the key file beside the
    log (``<log>.key``): how a site keys its confirmed outcomes to the decisions without sending the images."""
    path = Path(key_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such key file (the log's key is <log>.key, written by the service)")
    return hmac.new(load_key(path), data, hashlib.sha256).hexdigest()


class DecisionLog:
    """Appends chained decision lines to ``path`` (see the module docstring); thread-safe."""

    def __init__(self, path: str | os.PathLike, max_mb: float = DEFAULT_MAX_MB,
                 key_path: str | os.PathLike | None = None) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise IsADirectoryError(f"--log {self.path} is a folder; expected a file")
        if not self.path.parent.is_dir():
            raise FileNotFoundError(f"--log {self.path}: the folder {self.path.parent} does not exist")
        if not max_mb > 0:
            raise ValueError(f"Expected --log-max-mb > 0, but got {max_mb}")
        self.max_bytes = int(max_mb * 1024 * 1024)
        self.key = load_key(Path(key_path) if key_path else Path(f"{self.path}.key"))
        self.cond = threading.Condition()  # guards pending and writing (see record)
        self.pending: list[dict[str, Any]] = []
        self.writing = False
        self.prev, self.seq = GENESIS, 0
        _cut_torn_tail(self.path)
        for file in reversed(rotated(self.path)):  # the newest file with a whole line continues the chain
            last = _last_line(file)
            if last is not None:
                self.prev = line_hash(last)
                try:
                    self.seq = int(json.loads(last)["seq"])
                except (ValueError, KeyError, TypeError):
                    raise ValueError(f"{file}: its last line is not a riskcl decision record; riskcl appends only to "
                                     f"its own decision log (name another --log)") from None
                break

    def image_hash(self, data: bytes) -> str:
        """The keyed hash of an image's bytes (HMAC-SHA256 with the log's key; :func:`image_hmac`)."""
        return hmac.new(self.key, data, hashlib.sha256).hexdigest()

    def writable(self) -> bool:
        """Whether a line could be appended now (``/ready``)."""
        try:
            with open(self.path, "ab"):
                pass
            return True
        except OSError:
            return False

    def _rotate(self) -> None:
        if self.path.is_file() and self.path.stat().st_size >= self.max_bytes:
            older = rotated(self.path)[:-1]
            for k in range(len(older), 0, -1):  # FILE.k -> FILE.k+1, oldest first, then FILE -> FILE.1
                os.replace(f"{self.path}.{k}", f"{self.path}.{k + 1}")
            os.replace(self.path, f"{self.path}.1")

    def record(self, fields: Mapping[str, Any]) -> dict[str, Any]:
        """Append one decision (``fields``) and return the record written (with ``seq``, ``time``, ``prev``), synced
        to disk; :class:`LogUnavailable` when it cannot be written (the chain is left as it was).

        Group commit: requests that arrive while another thread is writing wait, and the next writer appends all of
        theirs in one write and one fsync (each still returns only once its own line is on disk), so concurrent
        clients share the sync instead of queueing for one each."""
        mine: dict[str, Any] = {"fields": fields}
        with self.cond:
            self.pending.append(mine)
            while "entry" not in mine and "error" not in mine:
                if self.writing:
                    self.cond.wait()
                    continue
                self.writing, batch, self.pending = True, self.pending, []
                self.cond.release()
                outcome: list = [RuntimeError("the decision log's writer was interrupted")] * len(batch)
                try:
                    outcome = self._write(batch)
                except Exception as exc:  # e.g. fields that are not JSON: each request of the batch hears it
                    outcome = [exc] * len(batch)
                finally:
                    self.cond.acquire()
                    self.writing = False
                    for item, result in zip(batch, outcome):
                        item["entry" if isinstance(result, dict) else "error"] = result
                    self.cond.notify_all()
        if "error" in mine:
            raise mine["error"]
        return mine["entry"]

    def _write(self, batch: list[dict[str, Any]]) -> list:
        """Write the batch's lines, chained, in one write and one fsync: their entries, or one LogUnavailable each
        (then nothing of the batch stays in the file and the chain is as it was)."""
        prev, seq, lines = self.prev, self.seq, []
        entries = []
        for item in batch:
            now = time.time()
            seq += 1
            entry = {**item["fields"], "seq": seq, "prev": prev,
                     "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"}
            line = canonical(entry)
            prev = line_hash(line)
            entries.append(entry)
            lines.append(line)
        data = ("\n".join(lines) + "\n").encode("utf-8")
        try:
            self._rotate()
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        except OSError as exc:
            return [self._unavailable(exc)] * len(batch)
        try:
            start = os.fstat(fd).st_size
            try:
                written = os.write(fd, data)
                if written != len(data):
                    raise OSError(f"wrote {written} of {len(data)} bytes")
                os.fsync(fd)
            except OSError as exc:
                try:  # nothing of the batch stays: the chain goes on from the last line that was synced
                    os.ftruncate(fd, start)
                except OSError:
                    pass
                return [self._unavailable(exc)] * len(batch)
        finally:
            os.close(fd)
        self.prev, self.seq = prev, seq
        return entries

    def _unavailable(self, exc: OSError) -> LogUnavailable:
        why = exc.strerror or type(exc).__name__
        return LogUnavailable(f"the decision log {self.path} cannot be written ({why})", why)


def new_request_id() -> str:
    return uuid.uuid4().hex


def point_id(point: Any) -> str:
    """A short id of an operating point's settings (``OperatingPoint.to_dict``): equal ids, equal decisions."""
    return hashlib.sha256(canonical(point.to_dict()).encode("utf-8")).hexdigest()[:16]


def decision_fields(*, request_id: str, client: str, source: str, model_sha256: str, point: Any,
                    row: Mapping[str, Any], metadata: Mapping[str, Any] | None, width: int, height: int,
                    image_hmac: str | None, unusual: bool | None = None) -> dict[str, Any]:
    """What one decision's line holds (``point``: the operating point that decided it; ``row``: riskcl's row of
    the image, classification or segmentation)."""
    return {"request_id": request_id, "client": client, "source": source, "model_sha256": model_sha256,
            "operating_point": {"id": point_id(point), "threshold": float(row["threshold"]), "method": point.method,
                                "certified": bool(point.certified), "inputs": point.pattern},
            "decision": row["decision"],
            "p_malignant": None if row.get("p_malignant") in (None, "") else float(row["p_malignant"]),
            **({"lesion_share": float(row["lesion_share"])} if row.get("lesion_share") not in (None, "") else {}),
            "unusual": unusual, "metadata": dict(metadata) if metadata else None,
            "image": {"width": int(width), "height": int(height), "hmac_sha256": image_hmac}}


@dataclass
class Verification:
    """What :func:`verify_log` found: ``ok``, the lines checked, the first problem (file, line number, why), and
    the last line's hash (an anchor to keep elsewhere)."""

    ok: bool
    lines: int = 0
    files: list[str] = field(default_factory=list)
    problem: str | None = None
    last_hash: str | None = None
    last_seq: int | None = None


def _first_seq(path: Path) -> int:
    with open(path, "rb") as fh:
        try:
            return int(json.loads(fh.readline())["seq"])
        except (ValueError, KeyError, TypeError):
            return 0


def _files(paths: Sequence[str | os.PathLike]) -> list[Path]:
    """The files of the logs named, each with its rotated files, oldest first (by their first line's number)."""
    out: list[Path] = []
    for p in map(Path, paths):
        out.extend([p] if p.suffix[1:].isdigit() else rotated(p) or [p])
    seen: set[Path] = set()
    unique = [f for f in out if not (f.resolve() in seen or seen.add(f.resolve()))]
    missing = [f for f in unique if not f.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: no such decision log")
    return sorted(unique, key=_first_seq)


def verify_log(paths: Sequence[str | os.PathLike]) -> Verification:
    """Check the chain over ``paths`` (a log and its rotated files are found by name; files are checked oldest
    first): every line whole JSON, numbered one after the other, and holding the hash of the line before."""
    files = _files(paths)
    prev, seq, count = GENESIS, 0, 0
    for file in files:
        with open(file, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                where = f"{file}, line {number}"
                if not raw.endswith(b"\n"):
                    return Verification(False, count, list(map(str, files)), f"{where}: torn (no end of line): "
                                        f"written partly, or cut", prev, seq)
                try:
                    record = json.loads(raw)
                except ValueError:
                    return Verification(False, count, list(map(str, files)), f"{where}: not a JSON record (changed)",
                                        prev, seq)
                if not isinstance(record, dict) or record.get("prev") != prev:
                    why = ("changed, removed or reordered: it does not hold the hash of the line before it"
                           if seq else "it does not start the chain (an earlier file is missing, or it was changed)")
                    number_of = record.get("seq") if isinstance(record, dict) else "?"
                    return Verification(False, count, list(map(str, files)), f"{where} (seq {number_of}): {why}",
                                        prev, seq)
                if record.get("seq") != seq + 1:
                    return Verification(False, count, list(map(str, files)), f"{where}: seq {record.get('seq')} "
                                        f"after {seq}: a line was removed or reordered", prev, seq)
                if canonical(record) != raw.rstrip(b"\n").decode("utf-8"):
                    return Verification(False, count, list(map(str, files)), f"{where}: not written by riskcl "
                                        f"(its bytes are not the record's canonical form: changed)", prev, seq)
                prev, seq, count = line_hash(raw), record["seq"], count + 1
    return Verification(True, count, list(map(str, files)), None, prev, seq)


def read_records(paths: Iterable[str | os.PathLike]) -> tuple[list[dict[str, Any]], list[str]]:
    """Every decision record of a log (and its rotated files), oldest first, and a warning for each line that is
    torn, not JSON, repeated (same ``seq``) or out of order, naming the file and line; no line is skipped without
    a word."""
    records, notes, seen = [], [], set()
    last = 0
    for file in _files(list(paths)):
        with open(file, "rb") as fh:
            for number, raw in enumerate(fh, 1):
                where = f"{file}, line {number}"
                if not raw.endswith(b"\n"):
                    notes.append(f"{where}: torn line (no end of line) left out")
                    continue
                try:
                    record = json.loads(raw)
                except ValueError:
                    notes.append(f"{where}: not a JSON record, left out")
                    continue
                seq = record.get("seq") if isinstance(record, dict) else None
                if not isinstance(seq, int):
                    notes.append(f"{where}: no decision number (seq), left out")
                    continue
                if seq in seen:
                    notes.append(f"{where}: seq {seq} repeated (a duplicated line), counted once")
                    continue
                if seq < last:
                    notes.append(f"{where}: seq {seq} after {last} (out of order), kept in time order")
                seen.add(seq)
                last = max(last, seq)
                records.append(record)
    records.sort(key=lambda r: r["seq"])
    return records, notes


def state_file_of(log: str | os.PathLike) -> Path:
    """Where the monitor leaves the state line the service shows (beside the log)."""
    return Path(f"{log}.monitor.json")


def read_state(log: str | os.PathLike | None) -> str | None:
    """The last monitor's state line for the served page, or None."""
    if not log:
        return None
    try:
        return json.loads(state_file_of(log).read_text(encoding="utf-8")).get("state")
    except (OSError, ValueError, AttributeError):
        return None

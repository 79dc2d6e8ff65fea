"""Atomic file writes and safe reads, used by every layer that touches disk.

A write goes to a temporary file in the same folder (``.NAME.tmpPID``), is fsynced and renamed over the target:
a reader, or a process killed mid-write, sees the old or the new file, never a torn one. A temp file left by a
killed process is removed by :func:`remove_stale_temps` the next time its folder is used. Errors name the path
the caller asked for (never the temp path) and what was expected.
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import stat
import zipfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

_TEMP = re.compile(r"\.tmp(\d+)(\.npy)?$")


def pid_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def temp_path(path: str | os.PathLike) -> Path:
    """The temporary sibling a write of ``path`` goes through (its name carries this process id)."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp{os.getpid()}")


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete temp files in ``folder`` whose writing process is dead; returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.search(p.name)
        if m and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            try:
                p.unlink()
                removed.append(p)
            except OSError:
                pass
    return removed


def check_writable_target(path: str | os.PathLike) -> Path:
    """Raise a clear error unless ``path`` can be written as a file: its folder exists and it is no folder."""
    path = Path(path)
    parent = path.parent
    if path.is_dir():
        raise IsADirectoryError(f"{path} is a folder; expected a file path to write")
    if parent.exists() and not parent.is_dir():
        raise NotADirectoryError(f"Cannot write {path}: {parent} is a file, not a folder")
    if not parent.is_dir():
        raise FileNotFoundError(f"Cannot write {path}: the folder {parent} does not exist")
    return path


def make_folder(path: str | os.PathLike, what: str = "output") -> Path:
    """Create the folder ``path`` (and its parents); ``NotADirectoryError`` naming the path when it, or a
    parent, is a file."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            where = "is a file" if p == path else f"lies under {p}, which is a file"
            raise NotADirectoryError(f"{path} {where}; expected a folder for the {what}")
    path.mkdir(parents=True, exist_ok=True)
    return path


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class IntegrityError(ValueError):
    """A file riskcl wrote earlier is not the file it recorded (its SHA-256 differs, or it is missing)."""


def verify_sha256(path: str | os.PathLike, expected: str, what: str, fix: str) -> str:
    """Check that ``path`` exists and its SHA-256 is ``expected`` (recorded when riskcl wrote it); returns the
    digest. :class:`IntegrityError` names the file, what it is, both digests and ``fix`` (what to do): anything
    riskcl loads that it wrote earlier goes through here (ensemble members, export folders, prediction CSVs being
    resumed)."""
    path = Path(path)
    if not path.is_file():
        raise IntegrityError(f"{path}: {what} is missing; {fix}")
    digest = file_sha256(path)
    if digest != expected:
        raise IntegrityError(f"{path}: {what} is not the file that was recorded (SHA-256 {digest[:12]}..., recorded "
                             f"{str(expected)[:12]}...): it was changed or replaced; {fix}")
    return digest


def distinct_stems(paths, always: bool = False) -> list[str]:
    """One file stem per input for the files an output writes per input: the input's stem, with a short hash of its
    resolved path where two inputs share a stem (``always``: for every input, so that a name never depends on the
    other inputs, and a resumed or repeated run never overwrites another input's file)."""
    import hashlib

    stems = [Path(p).stem for p in paths]
    counts = {s: stems.count(s) for s in stems}
    return [s if counts[s] == 1 and not always else
            f"{s}_{hashlib.sha256(str(Path(p).resolve()).encode()).hexdigest()[:8]}" for s, p in zip(stems, paths)]


FORMULA_LEADS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(value: Any) -> Any:
    """A CSV cell that a spreadsheet will not run as a formula: text starting with ``= + - @``, a tab or a carriage
    return gets a leading ``'`` (OWASP's advice for CSV exports); numbers and other text are returned as they are.
    :func:`spreadsheet_value` undoes it when riskcl reads its own CSVs back."""
    if isinstance(value, str) and value.startswith(FORMULA_LEADS):
        return "'" + value
    return value


def spreadsheet_value(text: Any) -> Any:
    """The value :func:`spreadsheet_safe` neutralised (a leading ``'`` before a formula character removed)."""
    if isinstance(text, str) and len(text) > 1 and text[0] == "'" and text[1:].startswith(FORMULA_LEADS):
        return text[1:]
    return text


def build_folder_atomically(path: str | os.PathLike, build: Callable[[Path], Any], marker: str) -> Any:
    """Let ``build(tmp)`` fill a fresh temp folder beside ``path``, then swap it in for ``path``: a reader, or a
    process killed mid-build, sees the old folder or the new one, never a mix. An existing ``path`` is replaced
    only when it holds ``marker`` (it was built this way) or is empty; the temp folder is removed on any failure."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file; expected a folder")
    if path.is_dir() and any(path.iterdir()) and not (path / marker).is_file():
        raise FileExistsError(f"{path} exists and holds files that are not a previous output of this command (no "
                              f"{marker}); refusing to replace it: name another folder or empty it")
    make_folder(path.parent)
    for stale in path.parent.glob(f".{path.name}.tmp*"):
        m = _TEMP.search(stale.name)
        if stale.is_dir() and (m is None or not pid_alive(int(m.group(1)))):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = path.parent / f".{path.name}.tmp{os.getpid()}"
    old = path.parent / f".{path.name}.old.tmp{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        result = build(tmp)
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return result


def read_csv(path: str | os.PathLike, **kwargs: Any):
    """``pandas.read_csv`` (all columns as text unless ``dtype`` says otherwise); ``ValueError`` naming the file
    when pandas cannot parse it."""
    import pandas as pd

    kwargs.setdefault("dtype", str)
    kwargs.setdefault("keep_default_na", False)
    try:
        return pd.read_csv(path, **kwargs)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except Exception as exc:  # pandas raises many parser errors
        raise ValueError(f"{path}: unreadable CSV ({type(exc).__name__}: {exc})") from None


def _default_mode(path: Path) -> None:
    """Give the file the mode a plain ``open()`` would (some writers create 0600 temp files)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, (stat.S_IRUSR | stat.S_IWUSR | stat.S_IRGRP | stat.S_IWGRP | stat.S_IROTH | stat.S_IWOTH)
             & ~umask)


def _fsync_dir(folder: Path) -> None:
    try:  # make the rename itself durable
        dfd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def atomic_write_with(path: str | os.PathLike, writer: Callable[[str], None]) -> None:
    """Let ``writer(tmp_path)`` write a file, then fsync and rename it into place (the temp file is removed on
    any failure)."""
    path = check_writable_target(path)
    tmp = temp_path(path)
    try:
        writer(str(tmp))
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        _default_mode(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as fh:
            fh.write(data)

    atomic_write_with(path, write)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def _json_default(o: Any) -> Any:
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def json_text(obj: Any) -> str:
    """JSON with sorted keys (NaN written as NaN, as Python's json reads it back)."""
    return json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n"


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json_text(obj))


def read_json(path: str | os.PathLike, expect: type = dict) -> Any:
    """Parse a JSON file; ``ValueError`` naming the file when it is unreadable or not a ``expect``."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: corrupt JSON ({exc})") from None
    if not isinstance(data, expect):
        raise ValueError(f"{path}: expected a JSON {expect.__name__}, but got {type(data).__name__}")
    return data


def npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """A ``.npz`` archive with fixed timestamps: identical arrays give identical bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for name in sorted(arrays):
            arr_buf = io.BytesIO()
            np.lib.format.write_array(arr_buf, np.asanyarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            zf.writestr(info, arr_buf.getvalue())
    return buf.getvalue()


def atomic_write_npz(path: str | os.PathLike, **arrays: np.ndarray) -> None:
    atomic_write_bytes(path, npz_bytes(arrays))


def load_npz(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a ``.npz`` without pickle; ``ValueError`` naming the file when it is corrupt or holds objects."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
        raise ValueError(f"{path}: corrupt or unreadable .npz archive ({type(exc).__name__}: {exc})") from None

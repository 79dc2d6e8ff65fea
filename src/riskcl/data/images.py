"""Image decoding and the prepared cache.

Every image is decoded once, converted to RGB (the public sets mix RGB, L, RGBA and P modes and some PNGs are
named ``.jpg``: Pillow reads by content, not by extension) and resized to ``size x size``. The result is kept
as a memory-mapped ``uint8`` array ``(N, size, size, 3)`` under the user cache folder, keyed by the data set
name, the size and a fingerprint of every source file (path, byte size, modification time), so later runs and
sweeps read no JPEG, and any change to the sources builds a new cache. Each file's MD5 (for duplicate detection
and content-hash groups) is computed once, when the cache is built, and kept beside it.
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image, UnidentifiedImageError

from .duplicates import file_md5

CACHE_VERSION = 2


class BadImageError(ValueError):
    """An image file that cannot be decoded; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def load_image(path: str | os.PathLike, size: int) -> np.ndarray:
    """Decode ``path`` to an RGB ``uint8`` array of shape ``(size, size, 3)``; ``BadImageError`` if unreadable."""
    p = str(path)
    try:
        if os.path.getsize(p) == 0:
            raise BadImageError(p, "empty (zero-byte) file; expected an image")
        with Image.open(p) as im:
            im.load()
            rgb = im.convert("RGB").resize((size, size), Image.BILINEAR)
            return np.asarray(rgb, dtype=np.uint8)
    except BadImageError:
        raise
    except FileNotFoundError:
        raise BadImageError(p, "file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise BadImageError(p, f"cannot decode image ({type(exc).__name__}: {exc})") from None


def _load_or_reason(args: tuple[str, int]) -> tuple[str, np.ndarray | str]:
    """``(md5 of the file, decoded array or the reason it failed)``; a missing file gets ``"missing:<path>"``."""
    path, size = args
    try:
        digest = file_md5(path)
    except OSError:
        digest = f"missing:{path}"
    try:
        return digest, load_image(path, size)
    except BadImageError as exc:
        return digest, exc.reason


def fingerprint(paths: Sequence[str], extra: str = "") -> str:
    """SHA-1 over (path, size, mtime) of every file: changes when any source file changes."""
    h = hashlib.sha1(f"v{CACHE_VERSION}|{extra}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


def decode_all(paths: Sequence[str], size: int, workers: int | None = None,
               progress: bool = True) -> Iterable[tuple[int, np.ndarray | str]]:
    """Yield ``(index, array or failure reason)`` for every path, decoding in parallel processes."""
    from tqdm.auto import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    jobs = [(p, size) for p in paths]
    bar = tqdm(total=len(jobs), desc=f"decoding {len(jobs)} images @{size}px", disable=not progress,
               unit="img", leave=False, mininterval=2.0)
    if workers <= 1 or len(jobs) < 64:
        for i, job in enumerate(jobs):
            bar.update(1)
            yield i, _load_or_reason(job)
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for i, res in enumerate(pool.map(_load_or_reason, jobs, chunksize=32)):
                bar.update(1)
                yield i, res
    bar.close()


def cached_images(name: str, paths: Sequence[str], size: int, cache_dir: Path,
                  progress: bool = True) -> tuple[np.ndarray, dict[str, str], list[str]]:
    """The memory-mapped ``(N, size, size, 3)`` array for ``paths``, the ``{path: reason}`` of bad files and
    every file's MD5 (in ``paths`` order).

    Built on a miss, written to a temporary file and renamed into place, so a killed build leaves no torn cache.
    """
    key = fingerprint(paths, f"{name}|{size}")
    folder = Path(cache_dir) / "images"
    folder.mkdir(parents=True, exist_ok=True)
    arr_path, meta_path = folder / f"{name}-{size}px-{key}.npy", folder / f"{name}-{size}px-{key}.json"
    if arr_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        return np.load(arr_path, mmap_mode="r"), meta["bad"], meta["hashes"]
    tmp = arr_path.with_suffix(f".tmp{os.getpid()}.npy")
    arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(paths), size, size, 3))
    bad: dict[str, str] = {}
    hashes = [""] * len(paths)
    for i, (digest, res) in decode_all(paths, size, progress=progress):
        hashes[i] = digest
        if isinstance(res, str):
            bad[paths[i]] = res
        else:
            arr[i] = res
    arr.flush()
    del arr
    os.replace(tmp, arr_path)
    meta_tmp = meta_path.with_suffix(f".tmp{os.getpid()}")
    meta_tmp.write_text(json.dumps({"name": name, "size": size, "n": len(paths), "bad": bad,
                                    "hashes": hashes}))
    os.replace(meta_tmp, meta_path)
    return np.load(arr_path, mmap_mode="r"), bad, hashes


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
    """In-memory ``(N, H, W, 3)`` images resized to ``(N, size, size, 3)`` (returned as is when already so)."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
    return out

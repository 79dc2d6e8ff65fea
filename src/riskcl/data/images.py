"""Image decoding, the one resize, and the prepared cache.

Every image is decoded once to 8-bit RGB (the public sets mix RGB, L, RGBA, P and CMYK modes and some PNGs are
named ``.jpg``: Pillow reads by content, not by extension). 16-bit and 32-bit greyscale images (``I;16``,
``I``, ``F``: MRI and microscopy exports) are scaled to 8 bits by the image's own range (its minimum maps to 0,
its maximum to 255), not clipped. The square resize is :func:`resize_images`: antialiased bilinear
interpolation (Pillow's and ``torch.nn.functional.interpolate(antialias=True)``'s triangle filter, widened by
the scale when shrinking) written as two float64 matrix products with dyadic weights, rounded back to whole
pixel values.
The exported models run the very same function in their graph, and with those weights every runtime computes
the same pixels bit for bit (checked: ONNX Runtime and PyTorch on all 1,311 Brain Tumor MRI test images and 500
ISIC images). A deployed model sees the pixels riskcl trained and evaluated on; in float32, ONNX Runtime's own
resize moved enough pixels by one level to change p(malignant) by 3.6e-4 on Brain Tumor MRI.

The result is kept as a memory-mapped ``uint8`` array ``(N, size, size, 3)`` under the user cache folder, keyed
by the data set name, the size and a fingerprint of every source file (path, byte size, modification time), so
later runs and sweeps read no image twice, and any change to the sources builds a new cache. Each file's MD5
(for duplicate detection and content-hash groups) is computed when the cache is built and kept beside it.
Decoding workers die with their parent, and the temp files of a killed build are removed by the next one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import threading
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from ..io import atomic_write_text, remove_stale_temps
from .duplicates import file_md5
from .decoding import BadImageError, decode_rgb

CACHE_VERSION = 5


WEIGHT_BITS = 16


def resize_weights(n_in: int, n_out: int) -> torch.Tensor:
    """``(n_out, n_in)`` float64 weights of the antialiased bilinear resize along one axis.

    Output pixel ``i`` is centred at ``(i + 0.5) * n_in / n_out`` in input coordinates; input pixel ``j`` (centre
    ``j + 0.5``) gets the triangle weight ``max(0, 1 - |distance| / support)`` with ``support = max(scale, 1)``,
    normalised per output pixel. The weights are then made multiples of ``2**-16`` that sum to exactly 1 (the
    largest weight of a row takes the rounding remainder): every product and partial sum of the two matrix
    products is then exactly representable in float64, so any runtime computes the very same value in any order,
    and rounding to whole pixel values never differs (rational weights such as 3/7 at the borders made ONNX
    Runtime and PyTorch disagree on ties). Written with tensor operations only, so that ``n_in`` stays symbolic
    when the function is exported (dynamic image sizes).
    """
    j = torch.arange(n_in, dtype=torch.float64) + 0.5
    scale = (j[-1:] + 0.5) / n_out
    support = torch.clamp(scale, min=1.0)
    centres = (torch.arange(n_out, dtype=torch.float64) + 0.5) * scale
    w = torch.clamp(1.0 - torch.abs(j[None, :] - centres[:, None]) / support, min=0.0)
    unit = float(2**WEIGHT_BITS)
    w = torch.round(w / w.sum(dim=1, keepdim=True) * unit)
    largest = (torch.arange(n_in)[None, :] == w.argmax(dim=1, keepdim=True)).to(torch.float64)
    w = w + (unit - w.sum(dim=1, keepdim=True)) * largest
    return w / unit


def resize_images(images: torch.Tensor, size: int, width: int | None = None) -> torch.Tensor:
    """``(N, C, H, W)`` pixels in [0, 255] -> ``(N, C, size, width or size)`` float64: antialiased bilinear, rounded.

    The one resize of riskcl: the cache, ``predict``, the exported models and an adopted model's declared
    preprocessing all call it.
    """
    h, w = images.shape[-2], images.shape[-1]
    x = images.to(torch.float64)
    out = torch.matmul(torch.matmul(resize_weights(h, size), x),
                       resize_weights(w, size if width is None else width).transpose(0, 1))
    return out.round().clamp(0, 255)


def resize_uint8(image: np.ndarray, size: int) -> np.ndarray:
    """One ``(H, W, 3)`` ``uint8`` image resized to ``(size, size, 3)`` by :func:`resize_images`."""
    if image.shape[:2] == (size, size):
        return np.ascontiguousarray(image)
    x = torch.from_numpy(np.require(image, requirements=["C", "W"])).permute(2, 0, 1)[None].float()  # read-only: copied
    return resize_images(x, size)[0].to(torch.uint8).permute(1, 2, 0).contiguous().numpy()


def load_image(path: str | os.PathLike, size: int, dicom=None) -> np.ndarray:
    """Decode ``path`` to an RGB ``uint8`` array of shape ``(size, size, 3)``; ``BadImageError`` if unreadable
    (``dicom``: the :class:`riskcl.data.dicom.DicomPolicy` of DICOM files)."""
    return resize_uint8(decode_rgb(path, dicom), size)


def _load_or_reason(args: tuple) -> tuple[str, np.ndarray | str]:
    """``(md5 of the file, decoded array or the reason it failed)``; a missing file gets ``"missing:<path>"``."""
    path, size, dicom = args
    try:
        digest = file_md5(path)
    except OSError:
        digest = f"missing:{path}"
    try:
        return digest, load_image(path, size, dicom)
    except BadImageError as exc:
        return digest, exc.reason


def _die_with_parent(parent: int) -> None:
    """Decoding worker set-up: one torch thread, and exit as soon as the parent process is gone."""
    torch.set_num_threads(1)
    try:  # Linux: the kernel kills this worker when its parent dies, even by SIGKILL
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass

    def watch() -> None:  # elsewhere (and as a second guard): poll the parent
        while True:
            if os.getppid() != parent:
                os._exit(1)
            threading.Event().wait(1.0)

    threading.Thread(target=watch, daemon=True).start()
    if os.getppid() != parent:
        os._exit(1)


def decode_all(paths: Sequence[str], size: int, workers: int | None = None,
               progress: bool = True, dicom=None) -> Iterable[tuple[int, tuple[str, np.ndarray | str]]]:
    """Yield ``(index, (md5, array or failure reason))`` for every path, decoding in parallel processes."""
    from tqdm.auto import tqdm

    workers = workers or min(8, os.cpu_count() or 1)
    jobs = [(p, size, dicom) for p in paths]
    bar = tqdm(total=len(jobs), desc=f"decoding {len(jobs)} images @{size}px", disable=not progress,
               unit="img", leave=False, mininterval=2.0)
    if workers <= 1 or len(jobs) < 64:
        for i, job in enumerate(jobs):
            bar.update(1)
            yield i, _load_or_reason(job)
    else:
        with ProcessPoolExecutor(max_workers=workers, initializer=_die_with_parent,
                                 initargs=(os.getpid(),)) as pool:
            for i, res in enumerate(pool.map(_load_or_reason, jobs, chunksize=32)):
                bar.update(1)
                yield i, res
    bar.close()


def fingerprint(paths: Sequence[str], extra: str = "") -> str:
    """SHA-1 over (path, size, mtime) of every file: changes when any source file changes."""
    h = hashlib.sha1(f"v{CACHE_VERSION}|{extra}".encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:20]


def _cache_folder(cache_dir: Path) -> Path:
    folder = Path(cache_dir) / "images"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise NotADirectoryError(f"The image cache folder {cache_dir} (data.cache_dir or $RISKCL_CACHE_DIR) is "
                                 f"a file or lies under one; expected a folder") from None
    return folder


def cached_array(cache_dir: Path, stem: str, shape: tuple[int, ...], build: Callable[[np.ndarray], dict]
                 ) -> tuple[np.ndarray, dict]:
    """The memory-mapped ``uint8`` array ``<stem>.npy`` of the cache and its ``<stem>.json`` facts. On a miss,
    ``build(array)`` fills a fresh array of ``shape`` and returns the facts; both are written to temporary files
    and renamed into place, so a killed build leaves no torn cache. Processes that miss the same cache at once
    (runs started together) build it once: the others wait on ``<stem>.mutex`` and read what it wrote."""
    folder = _cache_folder(cache_dir)
    remove_stale_temps(folder)
    arr_path, meta_path = folder / f"{stem}.npy", folder / f"{stem}.json"

    def cached() -> tuple[np.ndarray, dict] | None:
        if arr_path.exists() and meta_path.exists():
            return np.load(arr_path, mmap_mode="r"), json.loads(meta_path.read_text())
        return None

    hit = cached()
    if hit is not None:
        return hit
    with _exclusive(folder / f"{stem}.mutex"):
        hit = cached()  # built by another process while this one waited
        if hit is not None:
            return hit
        tmp = arr_path.with_suffix(f".tmp{os.getpid()}.npy")
        try:
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
            meta = build(arr)
            arr.flush()
            del arr
            os.replace(tmp, arr_path)
        finally:
            tmp.unlink(missing_ok=True)
        atomic_write_text(meta_path, json.dumps(meta))
    return np.load(arr_path, mmap_mode="r"), meta


@contextlib.contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (``flock``: released by the kernel when a holder dies); where locks
    are unavailable (no ``fcntl``, a file system without them) the build goes ahead unlocked."""
    try:
        import fcntl

        fh = open(path, "a")
    except (ImportError, OSError):
        yield
        return
    with fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def cached_images(name: str, paths: Sequence[str], size: int, cache_dir: Path,
                  progress: bool = True, dicom=None) -> tuple[np.ndarray, dict[str, str], list[str]]:
    """The memory-mapped ``(N, size, size, 3)`` array for ``paths``, the ``{path: reason}`` of bad files and
    every file's MD5 (in ``paths`` order); built on a miss (:func:`cached_array`). ``dicom``: how DICOM files are
    read (part of the cache's key)."""
    def build(arr: np.ndarray) -> dict:
        bad: dict[str, str] = {}
        hashes = [""] * len(paths)
        for i, (digest, res) in decode_all(paths, size, progress=progress, dicom=dicom):
            hashes[i] = digest
            if isinstance(res, str):
                bad[paths[i]] = res
            else:
                arr[i] = res
        return {"name": name, "size": size, "n": len(paths), "bad": bad, "hashes": hashes}

    policy = "" if dicom is None or dicom.to_dict() == {"window": "auto", "frames": "middle"} else \
        f"|dicom={json.dumps(dicom.to_dict(), sort_keys=True)}"
    key = fingerprint(paths, f"{name}|{size}{policy}")
    arr, meta = cached_array(cache_dir, f"{name}-{size}px-{key}", (len(paths), size, size, 3), build)
    return arr, meta["bad"], meta["hashes"]


def resize_array(images: np.ndarray, size: int) -> np.ndarray:
    """In-memory ``(N, H, W, 3)`` images resized to ``(N, size, size, 3)`` (returned as is when already so)."""
    if images.shape[1:3] == (size, size):
        return images
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for start in range(0, len(images), 256):
        x = torch.from_numpy(np.ascontiguousarray(images[start:start + 256])).permute(0, 3, 1, 2).float()
        out[start:start + 256] = resize_images(x, size).to(torch.uint8).permute(0, 2, 3, 1).numpy()
    return out

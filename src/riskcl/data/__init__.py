"""Data sets behind a registry: ``create_datasets(name, root, ...)``, images decoded once into a cache.

The package's face is lazy: decoding (:mod:`.decoding`, :mod:`.rgb`) loads no PyTorch."""
from __future__ import annotations

from .._lazy import lazy_face

_LAZY = {"SPLITS": "base", "DataIndex": "base", "ImageDataset": "base", "BadImageError": "decoding",
         "decode_bytes": "decoding", "decode_rgb": "decoding", "load_image": "images", "SplitData": "registry",
         "check_root": "registry", "create_dataset": "registry", "create_datasets": "registry",
         "create_eval_dataset": "registry", "dataset_options": "registry", "list_datasets": "registry",
         "load_source_images": "registry", "register_dataset": "registry"}
__all__ = sorted(_LAZY)

__getattr__, __dir__ = lazy_face(__name__, globals(), _LAZY)

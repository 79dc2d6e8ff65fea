"""Data sets behind a registry: ``create_datasets(name, root, ...)``, images decoded once into a cache."""
from .base import SPLITS, DataIndex, ImageDataset
from .images import BadImageError, decode_bytes, decode_rgb, load_image
from .registry import (SplitData, check_root, create_dataset, create_datasets, create_eval_dataset, dataset_options,
                       list_datasets, load_source_images, register_dataset)

__all__ = ["SPLITS", "BadImageError", "DataIndex", "ImageDataset", "SplitData", "check_root", "create_dataset",
           "create_datasets", "create_eval_dataset", "dataset_options", "decode_bytes", "decode_rgb", "list_datasets",
           "load_image", "load_source_images", "register_dataset"]

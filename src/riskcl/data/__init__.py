"""Data sets behind a registry: ``create_dataset(name, root, split, ...)``."""
from .base import DataIndex, ImageDataset
from .images import BadImageError, load_image
from .registry import SplitData, create_dataset, create_datasets, dataset_options, list_datasets, register_dataset
from .transforms import build_transform

__all__ = ["BadImageError", "DataIndex", "ImageDataset", "SplitData", "build_transform", "create_dataset",
           "create_datasets", "dataset_options", "list_datasets", "load_image", "register_dataset"]

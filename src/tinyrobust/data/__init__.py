"""Datasets as in-memory uint8 arrays, read safely from the official files, decoded once and cached.

Importing this package registers the built-in datasets ("cifar10", "svhn", "speech_commands",
"speech_commands_logmel", "speech_commands_wav") in ``DATASETS``.
"""

from . import cifar10, speech_commands, speech_logmel, svhn, waveform  # noqa: F401  (registration)
from .archive import download, extract_tar, md5_file, sha256_file
from .datasets import DATASETS, ArrayDataset, DatasetInfo, dataset_info, load_dataset, register_dataset
from .imagefolder import load_image_folder, read_image_folder
from .loader import BatchIterator, stratified_subset, to_tensors
from .splits import config_split, load_split, split_dataset, validation_indices

__all__ = [
    "DATASETS",
    "ArrayDataset",
    "BatchIterator",
    "DatasetInfo",
    "config_split",
    "dataset_info",
    "download",
    "extract_tar",
    "load_dataset",
    "load_image_folder",
    "load_split",
    "md5_file",
    "read_image_folder",
    "register_dataset",
    "sha256_file",
    "split_dataset",
    "stratified_subset",
    "to_tensors",
    "validation_indices",
]

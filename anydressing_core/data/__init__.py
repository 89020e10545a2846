"""Training data: manifest / DressCode / VITON-HD readers, triplets, aligned augmentation, masks."""

from .dataset import DataConfig, DressingDataset, collate
from .layouts import read_dresscode, read_vitonhd
from .masks import layer_masks
from .records import GarmentRef, SampleRecord, read_manifest
from .sampler import ResumableSampler

__all__ = ["DataConfig", "DressingDataset", "collate", "read_dresscode", "read_vitonhd", "layer_masks",
           "GarmentRef", "SampleRecord", "read_manifest", "ResumableSampler"]

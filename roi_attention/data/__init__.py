"""Region datasets (COCO instances, OpenSurfaces materials), their transforms and sampling."""

from ..labels import COCO_CATEGORY_IDS, COCO_CLASSES, OPENSURFACES_MATERIALS
from .build import BuildReport, build_region_dataset, decode_mask, encode_mask
from .coco import CocoRegions
from .opensurfaces import OpenSurfacesRegions
from .regions import ClassBalancedSampler, RegionDataset, load_region_split, region_collate
from .size_bins import SIZE_BIN_EDGES, SIZE_BIN_NAMES, size_bin
from .transforms import (
    EmptyRegionError,
    RandomRoiCrop,
    RoiResize,
    eval_transform,
    prepare_regions,
    train_transform,
)

__all__ = [
    "COCO_CATEGORY_IDS",
    "COCO_CLASSES",
    "OPENSURFACES_MATERIALS",
    "SIZE_BIN_EDGES",
    "SIZE_BIN_NAMES",
    "BuildReport",
    "ClassBalancedSampler",
    "CocoRegions",
    "EmptyRegionError",
    "OpenSurfacesRegions",
    "RandomRoiCrop",
    "RegionDataset",
    "RoiResize",
    "build_region_dataset",
    "decode_mask",
    "encode_mask",
    "eval_transform",
    "load_region_split",
    "prepare_regions",
    "region_collate",
    "size_bin",
    "train_transform",
]

"""Region datasets and their class names."""

from .labels import COCO_CATEGORY_IDS, COCO_CLASSES, OPENSURFACES_MATERIALS

__all__ = ["COCO_CATEGORY_IDS", "COCO_CLASSES", "OPENSURFACES_MATERIALS"]

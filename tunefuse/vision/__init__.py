"""Vision: image inputs (images.py), boxes and their files (boxes.py), CNN backbones with new heads (models.py)."""
from .boxes import deepforest_data, read_coco, read_voc
from .images import ImageProcessor, as_images, clear_cache, image_folder, read_image_csv

__all__ = ["ImageProcessor", "as_images", "clear_cache", "deepforest_data", "image_folder", "read_coco",
           "read_image_csv", "read_voc"]

"""Vision: image inputs (images.py) and CNN backbones with new heads (models.py) for the vision tasks."""
from .images import ImageProcessor, as_images, clear_cache, image_folder, read_image_csv

__all__ = ["ImageProcessor", "as_images", "clear_cache", "image_folder", "read_image_csv"]

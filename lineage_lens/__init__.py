"""lineage-lens: is head-level context-truthfulness inherited along a model lineage?"""

from lineage_lens.errors import (
    ConfigError,
    DataError,
    LineageLensError,
    ModelLoadError,
    ShapeMismatchError,
)
from lineage_lens.models import HeadGeometry, head_geometry, load_model

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "DataError",
    "HeadGeometry",
    "LineageLensError",
    "ModelLoadError",
    "ShapeMismatchError",
    "head_geometry",
    "load_model",
]

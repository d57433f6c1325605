"""Built-in passes. Importing this package registers them with the PassManager."""
from .fold_bn import FoldBn, bn_stats
from .equalize import Equalize

__all__ = ["FoldBn", "Equalize", "bn_stats"]

"""Built-in passes. Importing this package registers them with the PassManager."""
from .fold_bn import FoldBn, bn_stats
from .equalize import Equalize
from .insert_quantizers import InsertQuantizers, NodeOverride, UnsupportedOpError
from .calibrate import Calibrate
from .adaround import Adaround
from .bias_correction import BiasCorrection

__all__ = ["FoldBn", "Equalize", "InsertQuantizers", "Calibrate", "Adaround", "BiasCorrection", "NodeOverride", "UnsupportedOpError", "bn_stats"]

"""ohem: train torchvision region-based detectors with Online Hard Example Mining."""

from ohem.mining import SAMPLERS, SamplingRoIHeads, enable_heuristic_sampling, enable_ohem, select_hard_examples

__version__ = "0.1.0"
__all__ = [
    "SAMPLERS",
    "SamplingRoIHeads",
    "enable_heuristic_sampling",
    "enable_ohem",
    "select_hard_examples",
    "__version__",
]

"""ohem: train torchvision region-based detectors with Online Hard Example Mining."""

from ohem.mining import OHEMRoIHeads, enable_heuristic_sampling, enable_ohem, select_hard_examples

__version__ = "0.1.0"
__all__ = ["OHEMRoIHeads", "enable_heuristic_sampling", "enable_ohem", "select_hard_examples", "__version__"]

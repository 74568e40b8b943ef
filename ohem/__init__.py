"""ohem: train torchvision region-based detectors with Online Hard Example Mining."""

from ohem.mining import (
    SAMPLERS,
    Sample,
    SamplerBase,
    SamplingRoIHeads,
    enable_heuristic_sampling,
    enable_ohem,
    enable_sampler,
    register_sampler,
    select_hard_examples,
)

__version__ = "0.2.0"
__all__ = [
    "SAMPLERS",
    "Sample",
    "SamplerBase",
    "SamplingRoIHeads",
    "enable_heuristic_sampling",
    "enable_ohem",
    "enable_sampler",
    "register_sampler",
    "select_hard_examples",
    "__version__",
]

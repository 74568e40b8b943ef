"""``SAMPLERS``: ``sampler.method`` names to sampler factories (``SamplerConfig`` -> sampler). A new
sampler is a file with a class that has ``from_config``, one entry here, and its tests."""

from __future__ import annotations

from collections.abc import Callable

from ohem.config import SamplerConfig
from ohem.mining.hard_examples import OHEMSampler
from ohem.mining.heuristic import HeuristicSampler
from ohem.mining.importance import ISMixSampler
from ohem.mining.libra import LibraSampler
from ohem.mining.pisa import PISASampler
from ohem.mining.presample import PresampledOHEMSampler
from ohem.mining.prior import OHEMPriorSampler
from ohem.mining.sampler import Sampler
from ohem.mining.stratified import StratifiedOHEMSampler

SAMPLERS: dict[str, Callable[[SamplerConfig], Sampler]] = {
    "heuristic": HeuristicSampler.from_config,
    "ohem": OHEMSampler.from_config,
    "libra": LibraSampler.from_config,
    "ohem-presample": PresampledOHEMSampler.from_config,
    "ohem-stratified": StratifiedOHEMSampler.from_config,
    "pisa": PISASampler.from_config,
    "is-mix": ISMixSampler.from_config,
    "ohem-prior": OHEMPriorSampler.from_config,
}


def build_sampler(cfg: SamplerConfig) -> Sampler:
    """The sampler ``cfg.method`` names, with ``cfg``'s settings."""
    if cfg.method not in SAMPLERS:
        raise ValueError(f"sampler.method: unknown sampler {cfg.method!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[cfg.method](cfg)

"""Sampling-time transforms: a denoiser transform returns a denoiser, a solver transform
returns a solver (docs/design/sampling.md, docs/design/caching.md)."""

from sampling.transforms.caching import AttentionReuse, FeatureCache
from sampling.transforms.guidance import Guided, GuidanceInput
from sampling.transforms.time_shift import TimeShift

__all__ = ["AttentionReuse", "FeatureCache", "Guided", "GuidanceInput", "TimeShift"]

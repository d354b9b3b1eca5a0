"""Sampling-time transforms, one file each: a denoiser transform returns a denoiser, a
solver transform returns a solver. A file here registers its part
(``sampling.registry.register(TransformPart(...))``) and is picked up with no other edit
(docs/design/registry.md)."""

from sampling.transforms.attention_reuse import AttentionReuse
from sampling.transforms.feature_cache import FeatureCache
from sampling.transforms.guidance import Guided, GuidanceInput
from sampling.transforms.time_shift import TimeShift

__all__ = ["AttentionReuse", "FeatureCache", "Guided", "GuidanceInput", "TimeShift"]

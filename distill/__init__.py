"""Teacher -> student distillation methods (docs/design/distillation.md).

A method is a :class:`Method`: a loss for the shared training step, the initial extra
state it carries in ``TrainState.extra`` and the update of that state after each step.
Each method's file registers a :class:`~distill.registry.Distiller` (its config fields,
teacher checks, student config) that ``launch.distill`` finds by ``config.distill.method``.
"""

from distill.method import Method
from distill.progressive import guided_distillation, progressive_distillation
from distill.consistency import ConsistencyFunction, consistency_distillation

__all__ = ["ConsistencyFunction", "Method", "consistency_distillation", "guided_distillation",
           "progressive_distillation"]

"""What a distillation method hands the shared training loop."""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

from diffusion.train.state import TrainState
from diffusion.train.step import LossFn


def batch_cond(batch: dict, num_classes: int | None) -> dict:
    """The conditions a distillation batch hands the networks: a text model's ``context``
    ``[B, L, D]`` and ``null_context`` (the empty prompt's, for guidance), a
    class-conditional model's ``label [B]`` (only when ``num_classes``)."""
    cond = {k: batch[k] for k in ("context", "null_context") if k in batch}
    if num_classes is not None:
        cond["label"] = batch["label"]
    return cond


@dataclasses.dataclass(frozen=True)
class Method:
    """A distiller.

    Attributes:
      loss_fn: ``(params, batch, rng, state) -> (loss, aux)`` for ``make_train_step``.
      init_extra: ``(student_params, teacher_params) -> extra``, the initial
        ``TrainState.extra`` (called under ``jit`` when the state is created).
      after_update: ``(state, carry) -> state`` after every optimizer step (or None);
        ``carry`` is the loss's ``aux["carry"]`` (``diffusion.train.step.make_train_step``).
      before_training: ``workdir -> None``, run under the work directory's lock before
        the run's first checkpoint (PSO writes its reference cache), or None.
    """

    loss_fn: LossFn
    init_extra: Callable[[Any, Any], Any]
    after_update: Callable[..., TrainState] | None = None
    before_training: Callable[[Any], None] | None = None

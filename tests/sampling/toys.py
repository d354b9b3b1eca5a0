"""Small exact denoisers and helpers for sampler tests."""

import jax
import jax.numpy as jnp
from flax import struct

from diffusion.contract import Stateless
from diffusion.param import Prediction
from diffusion.schedules import Schedule, bcast_right
from sampling import registry


@struct.dataclass
class LabelMeans(Stateless):
    """A conditional 'model' whose x0 prediction is ``means[label]`` (the null label,
    ``len(means)``, predicts 0). Records nothing; pure."""

    schedule: Schedule = struct.field(pytree_node=False)
    means: jax.Array = None

    def __call__(self, params, x_t, t, cond=None, **_):
        table = jnp.concatenate([self.means, jnp.zeros((1, self.means.shape[1]))])
        x0 = table[cond["label"]].reshape(x_t.shape)
        a, s = self.schedule.alpha_sigma(jnp.broadcast_to(t, x_t.shape[:1]))
        eps = (x_t - bcast_right(a, x_t) * x0) / bcast_right(s, x_t)
        return Prediction(x0=x0, eps=eps), {}


def make_solver(name: str, schedule: Schedule, **knobs):
    """A registered solver by name."""
    return registry.solver(name).make(schedule, **knobs)


def solver_names() -> list[str]:
    return sorted(registry.solvers())


def stateless(fn):
    """Adapts ``fn(x, t) -> Prediction`` to the solver's ``model(x, t, cache) -> (Prediction, cache)``."""
    return lambda x, t, cache: (fn(x, t), cache)

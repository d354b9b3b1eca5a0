"""A tiny diffusion training setup shared by the train tests."""

import jax
import jax.numpy as jnp

from diffusion.data.digits import load_digits
from diffusion.nn.denoiser import Denoiser
from diffusion.nn.unet import UNet
from diffusion.schedules import make_schedule
from diffusion.train.objective import make_diffusion_loss
from diffusion.train.optim import make_optimizer
from diffusion.train.setup import state_factory
from diffusion.train.step import make_train_step

MODEL = UNet(channels=8, channel_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), num_heads=2, num_classes=10)
DENOISER = Denoiser(MODEL, make_schedule("linear"), "eps")
OPTIMIZER = make_optimizer(3e-3, warmup_steps=5, num_steps=100)


def init_params(key):
    return MODEL.init(key, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)), label=jnp.zeros((1,), jnp.int32))["params"]


def make_state_fn(seed=0):
    return state_factory(init_params, OPTIMIZER, jax.random.PRNGKey(seed))


def train_step_fn(ema_decay=0.99):
    return make_train_step(make_diffusion_loss(DENOISER, "eps", 0.1, 10), OPTIMIZER, ema_decay)


def digits_batch(n=32, offset=0):
    x, y = load_digits("train")
    return {"image": x[offset:offset + n], "label": y[offset:offset + n]}


VIDEO_MODEL = UNet(channels=8, channel_mult=(1,), num_res_blocks=1, attn_resolutions=(), num_heads=2,
                   temporal=True)
VIDEO_DENOISER = Denoiser(VIDEO_MODEL, make_schedule("linear"), "eps")


def init_video_params(key):
    return VIDEO_MODEL.init(key, jnp.zeros((1, 3, 8, 8, 1)), jnp.zeros((1, 3)))["params"]


def make_video_state_fn(seed=0):
    return state_factory(init_video_params, OPTIMIZER, jax.random.PRNGKey(seed))


def video_train_step_fn(per_frame_prob=0.5):
    return make_train_step(make_diffusion_loss(VIDEO_DENOISER, "eps", per_frame_prob=per_frame_prob), OPTIMIZER, 0.99)


def video_batch(n=16, offset=0):
    """``{"image": [n, 3, 8, 8, 1]}``: consecutive digits as the frames of a video."""
    x, _ = load_digits("train")
    return {"image": x[3 * offset:3 * (offset + n)].reshape(n, 3, 8, 8, 1)}

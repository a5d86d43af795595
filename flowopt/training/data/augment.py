"""On-device image transforms: per-channel normalisation and the CIFAR crop+flip augmentation."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def normalize(images: jax.Array, mean: jax.Array, std: jax.Array) -> jax.Array:
    """Map ``uint8`` images to float32 with zero mean and unit std per channel."""
    return (images.astype(jnp.float32) / 255.0 - mean) / std


@jax.jit
def random_crop_flip(key: jax.Array, images: jax.Array) -> jax.Array:
    """CIFAR augmentation: zero-pad 4 pixels, random crop back, random horizontal flip.

    Args:
      key: a PRNG key; the same key gives the same augmentation.
      images: ``[N, H, W, C]`` batch (any dtype).
    """
    pad = 4
    n, h, w, _ = images.shape
    crop_key, flip_key = jax.random.split(key)
    offsets = jax.random.randint(crop_key, (n, 2), 0, 2 * pad + 1)
    flips = jax.random.bernoulli(flip_key, 0.5, (n,))
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))

    def one(image: jax.Array, offset: jax.Array, flip: jax.Array) -> jax.Array:
        crop = jax.lax.dynamic_slice(image, (offset[0], offset[1], 0), (h, w, image.shape[-1]))
        return jnp.where(flip, crop[:, ::-1], crop)

    return jax.vmap(one)(padded, offsets, flips)

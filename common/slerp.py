"""Spherical linear interpolation (SLERP) between noise latents.

Gaussian noise in high dimensions lives near a sphere of radius sqrt(d). A
straight line between two noise samples cuts through the inside of that
sphere, so its midpoint has too small a norm and decodes to a washed-out,
blurry image. SLERP walks along the sphere instead, so every in-between latent
looks like real noise to the diffusion model.
"""

import torch


def slerp(start, end, t, parallel_threshold=0.9995):
    """Interpolate from `start` (t=0) to `end` (t=1) along the great circle.

    start, end: tensors of the same shape (one latent each).
    t: a float or a 1-D tensor of fractions; with a tensor the result gets a
       leading batch dimension, one latent per fraction.
    Nearly parallel vectors fall back to linear interpolation, where the
    spherical formula divides by sin(angle) ~ 0.
    """
    t_tensor = torch.as_tensor(t, dtype=torch.float64)
    single = t_tensor.ndim == 0
    t_tensor = t_tensor.reshape(-1, *([1] * start.ndim))
    a, b = start.double(), end.double()
    cos_angle = (a * b).sum() / (a.norm() * b.norm())
    cos_angle = cos_angle.clamp(-1.0, 1.0)
    if cos_angle.abs() > parallel_threshold:
        mixed = (1 - t_tensor) * a + t_tensor * b
    else:
        angle = torch.arccos(cos_angle)
        sin_angle = torch.sin(angle)
        mixed = (torch.sin((1 - t_tensor) * angle) / sin_angle) * a + (torch.sin(t_tensor * angle) / sin_angle) * b
    # Exact endpoints, whatever rounding did in between.
    mixed = torch.where(t_tensor == 0, a, mixed)
    mixed = torch.where(t_tensor == 1, b, mixed)
    mixed = mixed.to(start.dtype)
    return mixed[0] if single else mixed

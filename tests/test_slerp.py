"""common/slerp.py: spherical interpolation of noise latents."""

import math

import torch
from common.slerp import slerp


def test_slerp_endpoints_are_exact():
    a, b = torch.randn(4, 8, 8), torch.randn(4, 8, 8)
    assert torch.equal(slerp(a, b, 0.0), a)
    assert torch.equal(slerp(a, b, 1.0), b)
    batch = slerp(a, b, torch.tensor([0.0, 0.5, 1.0]))
    assert batch.shape == (3, 4, 8, 8)
    assert torch.equal(batch[0], a) and torch.equal(batch[2], b)


def test_slerp_keeps_the_norm_of_gaussian_noise_where_lerp_shrinks_it():
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(4, 64, 64, generator=generator), torch.randn(4, 64, 64, generator=generator)
    middle = slerp(a, b, 0.5)
    linear_middle = (a + b) / 2
    radius = math.sqrt(a.numel())
    assert abs(middle.norm().item() / radius - 1) < 0.02
    assert linear_middle.norm().item() / radius < 0.75  # about 1/sqrt(2)


def test_slerp_follows_the_great_circle():
    a, b = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    third = slerp(a, b, 1 / 3)
    assert torch.allclose(third, torch.tensor([math.cos(math.pi / 6), math.sin(math.pi / 6)]), atol=1e-6)


def test_slerp_batched_equals_one_at_a_time():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    fractions = torch.linspace(0, 1, 7)
    batch = slerp(a, b, fractions)
    for index, fraction in enumerate(fractions):
        assert torch.allclose(batch[index], slerp(a, b, float(fraction)), atol=1e-6)


def test_slerp_falls_back_to_lerp_for_parallel_vectors():
    a = torch.randn(16)
    b = a * 2.0  # same direction: the angle is 0 and sin(angle) would divide by zero
    middle = slerp(a, b, 0.5)
    assert torch.isfinite(middle).all()
    assert torch.allclose(middle, a * 1.5, atol=1e-5)

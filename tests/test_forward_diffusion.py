"""common/forward_diffusion.py: the noisy batch the UNet learns to undo."""

import torch
from diffusers import DDPMScheduler

from common.forward_diffusion import noisy_batch


def test_timesteps_start_at_min_timestep_and_the_noise_is_the_target():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    latents = torch.randn(256, 4, 2, 2)
    noisy, timesteps, target = noisy_batch(scheduler, latents, torch.Generator().manual_seed(0), min_timestep=700)
    assert timesteps.min() >= 700 and timesteps.max() <= 999 and len(set(timesteps.tolist())) > 100
    torch.testing.assert_close(noisy, scheduler.add_noise(latents, target, timesteps))
    # without a minimum, every timestep can be drawn, and the draws match a plain randint after the noise
    _, everywhere, _ = noisy_batch(scheduler, latents, torch.Generator().manual_seed(0))
    generator = torch.Generator().manual_seed(0)
    torch.randn(latents.shape, generator=generator)
    assert torch.equal(everywhere, torch.randint(0, 1000, (256,), generator=generator))
    assert everywhere.min() < 300


def test_offset_noise_gives_each_picture_and_channel_its_own_mean_and_keeps_the_other_draws():
    scheduler = DDPMScheduler(num_train_timesteps=1000)
    latents = torch.randn(64, 4, 32, 32)
    plain, plain_timesteps, plain_noise = noisy_batch(scheduler, latents, torch.Generator().manual_seed(0))
    offset, timesteps, noise = noisy_batch(scheduler, latents, torch.Generator().manual_seed(0), offset_noise=0.1)
    # the same pixel noise and timesteps, one constant per picture and channel added to the noise
    assert torch.equal(timesteps, plain_timesteps)
    shift = noise - plain_noise
    torch.testing.assert_close(shift, shift[:, :, :1, :1].expand_as(shift))
    torch.testing.assert_close(offset, scheduler.add_noise(latents, noise, timesteps))
    # a channel's mean over 32x32 pixels of plain noise spreads by 1/32; the offset's 0.1 dominates it
    assert plain_noise.mean(dim=(2, 3)).std() < 0.045
    assert 0.08 < noise.mean(dim=(2, 3)).std() < 0.13

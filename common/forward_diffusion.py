"""The forward diffusion of DDPM: what the UNet is trained to undo.

Training never runs the sampler. It takes a clean latent, picks a random
timestep t, and mixes in Gaussian noise at the level the noise schedule gives
for t: noisy = sqrt(a_t) * latent + sqrt(1 - a_t) * noise. The UNet sees the
noisy latent and t and must predict the noise (or, for v-prediction models,
the velocity). One random t per image per update, which is why a single
update's loss jumps around: some timesteps are easy, some hard.

Which timesteps are drawn decides what is learned. At high noise only a
picture's colours and large shapes survive, so that is where the sampler
settles them; fine detail is settled near the end. `min_timestep` keeps
training on the noisy end of the schedule (exercise 3a uses it on micro).

Offset noise (Guttenberg, 2023) adds one constant per picture and channel to
the noise. Without it, a picture's average colour shows through the noise even
at the last timestep, and the UNet learns to read it from its input rather than
from the prompt; at sampling the start is pure noise, whose average is zero, so
every picture comes out in the world's average colours. A model pretrained with
offset noise should be fine-tuned with it too (diffusers' DreamBooth scripts
have the same flag), or the fine-tuning teaches the habit back.
"""

import torch

from common.device import copy_to_device


def add_offset_noise(noise, strength, generator):
    """`noise` plus `strength` times one constant per picture and channel, drawn from `generator`
    (on the CPU, as `noise` is)."""
    return noise + strength * torch.randn(noise.shape[:2] + (1, 1), generator=generator)


def noisy_batch(noise_scheduler, latents, generator, min_timestep=0, offset_noise=0.0):
    """(noisy latents, timesteps, what the UNet should predict), all drawn from `generator`; timesteps
    uniform from min_timestep up to the schedule's last; `offset_noise` times a per-picture, per-channel
    constant added to the noise (0: none, and the generator's draws are those without it)."""
    noise = torch.randn(latents.shape, generator=generator)
    timesteps = copy_to_device(torch.randint(min_timestep, noise_scheduler.config.num_train_timesteps,
                                             (latents.shape[0],), generator=generator), latents.device)
    if offset_noise:
        noise = add_offset_noise(noise, offset_noise, generator)
    noise = copy_to_device(noise, latents.device, latents.dtype)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noisy, timesteps, noise_scheduler.get_velocity(latents, noise, timesteps)
    return noisy, timesteps, noise

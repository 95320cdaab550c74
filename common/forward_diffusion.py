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
"""

import torch

from common.device import copy_to_device


def noisy_batch(noise_scheduler, latents, generator, min_timestep=0):
    """(noisy latents, timesteps, what the UNet should predict), all drawn from `generator`; timesteps
    uniform from min_timestep up to the schedule's last."""
    noise = copy_to_device(torch.randn(latents.shape, generator=generator), latents.device, latents.dtype)
    timesteps = copy_to_device(torch.randint(min_timestep, noise_scheduler.config.num_train_timesteps,
                                             (latents.shape[0],), generator=generator), latents.device)
    noisy = noise_scheduler.add_noise(latents, noise, timesteps)
    if noise_scheduler.config.prediction_type == "v_prediction":
        return noisy, timesteps, noise_scheduler.get_velocity(latents, noise, timesteps)
    return noisy, timesteps, noise

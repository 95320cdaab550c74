"""A loss curve that can show learning: the same noise, every time.

A training update's loss depends mostly on its random timestep (predicting
the noise at t = 900 is easy, at t = 50 hard), so the raw curve is a band
whose smoothed middle hardly moves while the model learns. This module fixes
the randomness instead: once, from its own seeded generator, it draws for
every evaluation image a few (noise, timestep) pairs, the timesteps spread
evenly over the whole range. Every evaluation then asks the model the very
same questions, so any change in the answer is a change in the model.

Evaluated on the instance images with the instance prompt, the loss falls as
the subject is learned; on the class images with the class prompt, it shows
what prior preservation protects: it should hardly move. Nothing here draws
from the training's generator, so training goes on exactly as without it.
"""

import torch

from common.latent_cache import to_tensor


class EvaluationLoss:
    """The mean diffusion loss on a fixed set, per role ("instance", "class").

    `images_by_role`: {role: [PIL images]}; `pairs_per_image` fixed (noise,
    timestep) pairs are drawn per image. `embed(role)` returns the embeddings
    of the role's caption, [1, tokens, width] (recomputed at each evaluation,
    since the text encoder or a learned word may be training).
    """

    def __init__(self, vae, noise_scheduler, images_by_role, embed, *, pairs_per_image, device, dtype, seed=2024,
                 batch_size=None):
        self.noise_scheduler, self.embed = noise_scheduler, embed
        # Larger batches run faster; on a GPU 8 keeps SD 1.5 at 512 px within an 8 GB card.
        self.batch_size = batch_size or (8 if torch.device(device).type == "cuda" else 20)
        generator = torch.Generator().manual_seed(seed)
        steps = noise_scheduler.config.num_train_timesteps
        self.examples = {}
        for role, images in images_by_role.items():
            with torch.no_grad():  # the posterior mean: the image's own latent, no sampling noise
                pixels = torch.stack([to_tensor(image) for image in images]).to(device, vae.dtype)
                latents = torch.cat([vae.encode(pixels[i:i + 1]).latent_dist.mean for i in range(len(pixels))])
            latents = (latents * vae.config.scaling_factor).to(dtype)
            count = len(images) * pairs_per_image
            # pair k of each image falls in the k-th of `pairs_per_image` equal slices of the timesteps
            slices = torch.arange(pairs_per_image).repeat(len(images))
            timesteps = ((slices + torch.rand(count, generator=generator)) * steps / pairs_per_image).long()
            noise = torch.randn((count, *latents.shape[1:]), generator=generator).to(device, dtype)
            latents = latents.repeat_interleave(pairs_per_image, dim=0)
            self.examples[role] = (latents, noise, timesteps.clamp(max=steps - 1).to(device))

    def __call__(self, unet):
        """{role: mean loss} for `unet` as it is now (call under torch.no_grad and eval mode)."""
        losses = {}
        for role, (latents, noise, timesteps) in self.examples.items():
            embedding = self.embed(role)
            total = 0.0
            for start in range(0, len(latents), self.batch_size):
                part = slice(start, start + self.batch_size)
                noisy = self.noise_scheduler.add_noise(latents[part], noise[part], timesteps[part])
                target = noise[part]
                if self.noise_scheduler.config.prediction_type == "v_prediction":
                    target = self.noise_scheduler.get_velocity(latents[part], noise[part], timesteps[part])
                prediction = unet(noisy, timesteps[part], embedding.expand(len(noisy), -1, -1)).sample
                total += torch.nn.functional.mse_loss(prediction.float(), target.float(), reduction="sum")
            losses[role] = (total / noise.numel()).item()
        return losses

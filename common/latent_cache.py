"""The frozen VAE's view of the training images, computed once.

The VAE never changes during DreamBooth or textual-inversion training, so
encoding the same ten images on every update (as the original course did)
repeats identical work. By default each image, and its mirror image when
flips are on, is encoded once and its latent distribution (mean, std) kept;
each update then draws a fresh sample from it, exactly as encoding anew
would. With cache=False the VAE runs every update, for comparison.
"""

import numpy as np
import torch

from common.device import copy_to_device


def to_tensor(image):
    """PIL RGB -> [3, H, W] in [-1, 1], the VAE's input range."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / 127.5 - 1.0).permute(2, 0, 1)


class LatentCache:
    def __init__(self, vae, images_by_role, flip, cache, device, dtype):
        self.vae, self.flip, self.cache = vae, flip, cache
        self.sizes = {role: len(images) for role, images in images_by_role.items()}
        self.pixels = {role: torch.stack([to_tensor(image) for image in images]).to(device, dtype)
                       for role, images in images_by_role.items()}
        if cache:
            with torch.no_grad():
                self.stats = {(role, False): self._encode(pixels) for role, pixels in self.pixels.items()}
                if flip:
                    self.stats.update({(role, True): self._encode(pixels.flip(-1))
                                       for role, pixels in self.pixels.items()})
            del self.pixels  # the cache is all that is needed from now on

    def _encode(self, pixels):
        # One image at a time, so cached and uncached runs do the very same arithmetic.
        stats = [self.vae.encode(pixels[i:i + 1]).latent_dist for i in range(len(pixels))]
        return torch.cat([s.mean for s in stats]), torch.cat([s.std for s in stats])

    def draw(self, role, batch_size, generator):
        """Pick `batch_size` images of `role` (mirrored at random when flips are on) and sample their latents."""
        return self.draw_with_indices(role, batch_size, generator)[0]

    def draw_with_indices(self, role, batch_size, generator):
        """As draw, and also which images were picked (to pair each with its own caption)."""
        indices = torch.randint(0, self.sizes[role], (batch_size,), generator=generator)
        flips = (torch.rand(batch_size, generator=generator) < 0.5) & self.flip
        means, stds = [], []
        with torch.no_grad():
            for index, flipped in zip(indices.tolist(), flips.tolist()):
                if self.cache:
                    mean, std = self.stats[(role, flipped)]
                    mean, std = mean[index:index + 1], std[index:index + 1]
                else:
                    pixels = self.pixels[role][index:index + 1]
                    mean, std = self._encode(pixels.flip(-1) if flipped else pixels)
                means.append(mean)
                stds.append(std)
            mean, std = torch.cat(means), torch.cat(stds)
            noise = copy_to_device(torch.randn(mean.shape, generator=generator), mean.device, mean.dtype)
            sample = mean + std * noise
        return sample * self.vae.config.scaling_factor, indices

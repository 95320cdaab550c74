"""Turning prompts and seeds into images, a batch at a time, with a progress bar.

Each image gets its own seeded generator, so an image depends only on its
prompt, seed and settings, never on which other images shared its batch:
`--batch-size 4` gives the same pictures as `--batch-size 1` (on a GPU up to
rounding: its kernels may sum in another order for another batch shape).
"""

import torch
from tqdm.auto import tqdm


def seeded_generator(seed):
    # CPU generators give the same noise on every device, so a seed means the
    # same picture on a laptop and on a GPU (up to fp16 rounding).
    return torch.Generator("cpu").manual_seed(int(seed))


def generate(pipe, prompts, seeds, *, steps, resolution, guidance, negative_prompt=None, batch_size=1,
             latents=None, desc="images", on_batch=None):
    """One image per (prompt, seed, guidance); `guidance` may be one number or one per image.

    `latents` (optional, one per image) replaces the seeded starting noise, as
    the morph does with interpolated noise. `on_batch(images)` is called with
    each batch's images as soon as they are drawn.
    """
    count = len(prompts)
    guidances = list(guidance) if isinstance(guidance, (list, tuple)) else [guidance] * count
    if not (len(seeds) == len(guidances) == count):
        raise ValueError("prompts, seeds and guidance values must have the same length")
    images = []
    with tqdm(total=count, desc=desc, unit="image") as bar:
        start = 0
        while start < count:
            # A batch shares one guidance scale, so it ends where the scale changes.
            stop = start + 1
            while stop < min(count, start + batch_size) and guidances[stop] == guidances[start]:
                stop += 1
            batch = slice(start, stop)
            result = pipe(
                prompt=prompts[batch],
                negative_prompt=[negative_prompt] * (stop - start) if negative_prompt else None,
                num_inference_steps=steps,
                guidance_scale=guidances[start],
                height=resolution,
                width=resolution,
                generator=[seeded_generator(seed) for seed in seeds[batch]],
                latents=None if latents is None else latents[batch],
            )
            images.extend(result.images)
            if on_batch is not None:
                on_batch(result.images)
            bar.update(stop - start)
            start = stop
    return images


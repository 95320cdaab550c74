"""Class images for prior preservation, drawn once by the base model and cached.

DreamBooth's prior images must come from the *unmodified* model: they record
what "a fabric pattern" meant before fine-tuning. Drawing 100 of them costs
minutes, so they are cached in a folder keyed by base model, prompt,
resolution and the sampling settings that drew them (steps, guidance), and only
missing or damaged ones are drawn again. A local base
model also keys the cache by its weight files (size and time written), so a
retrained model, such as a re-pretrained micro model, never reuses the old
model's pictures as its prior.
"""

import hashlib
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from common.cli import SMALL_IMAGE
from common.generation import generate
from common.saving import save_image


def _weights_stamp(base_model):
    folder = Path(base_model)
    if not folder.is_dir():
        return ""  # a hub id: its name is the key
    files = sorted(folder.glob("*/*.safetensors")) + sorted(folder.glob("*/*.bin"))
    return "|".join(f"{path.relative_to(folder)}:{path.stat().st_size}:{path.stat().st_mtime_ns}" for path in files)


def class_image_folder(root, base_model, prompt, resolution, *, steps, guidance):
    """The cache folder for (base model, prompt, resolution, steps, guidance); `base_model` is a hub id or a
    local folder. Pictures drawn with other steps are other pictures: a run never trains on them unasked."""
    key = hashlib.sha256(f"{base_model}|{_weights_stamp(base_model)}|{prompt}|{resolution}|{steps}|{guidance:g}"
                         .encode()).hexdigest()[:12]
    slug = "_".join("".join(c if c.isalnum() else " " for c in prompt.lower()).split())[:40]
    return Path(root) / f"{slug}_{resolution}px_{key}"


def _usable(path, resolution):
    try:
        with Image.open(path) as image:
            image.load()
            return image.size == (resolution, resolution)
    except (FileNotFoundError, UnidentifiedImageError, OSError):
        return False


# Images drawn together: 16 on a GPU, which larger batches keep busy (as the morph's), and for small
# images anywhere (common/cli.py says why); 4 for large images elsewhere.
BATCH_SIZE = {"cuda": 16, "small": 16, "other": 4}


def ensure_class_images(pipe, folder, prompt, count, resolution, *, steps, guidance, batch_size=None, seed=0):
    """`count` class images in `folder`, drawing only the missing or unusable ones; returns them as PIL images.
    Each image depends on its seed only, not on its batch (common/generation.py)."""
    folder = Path(folder)
    batch_size = batch_size or BATCH_SIZE["cuda" if pipe.device.type == "cuda" else
                                          "small" if resolution <= SMALL_IMAGE else "other"]
    paths = [folder / f"class_{index:04d}.png" for index in range(count)]
    missing = [index for index, path in enumerate(paths) if not _usable(path, resolution)]
    if missing:
        print(f"drawing {len(missing)} class images for '{prompt}' into {folder} (cached for later runs)")
        images = generate(pipe, [prompt] * len(missing), [seed + index for index in missing], steps=steps,
                          resolution=resolution, guidance=guidance, batch_size=batch_size, desc="class images")
        for index, image in zip(missing, images):
            save_image(image, paths[index])
    return [Image.open(path).convert("RGB") for path in paths]


def shares(count, prompts):
    """How many of `count` class images each of `prompts` class prompts draws: as even as possible."""
    return [count // prompts + (index < count % prompts) for index in range(prompts)]


def class_images_for_prompts(pipe, folder_of, prompts, count, resolution, *, steps, guidance):
    """`count` class images shared evenly by `prompts`: (images, the caption of each image).

    `folder_of(prompt)` names each prompt's cache folder (see `class_image_folder`).
    """
    images, captions = [], []
    for prompt, share in zip(prompts, shares(count, len(prompts))):
        images += ensure_class_images(pipe, folder_of(prompt), prompt, share, resolution, steps=steps,
                                      guidance=guidance)
        captions += [prompt] * share
    return images, captions

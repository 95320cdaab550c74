"""Reading a folder of training images, forgiving what can be fixed and naming what cannot.

Students drop phone photos, screenshots and stray files into training_images/.
A phone photo is turned upright as its camera recorded (EXIF orientation: the
pixels of a portrait photo are often stored sideways); 16- and 32-bit images
(scanners, photo editors) are scaled to 8 bits, not clipped to white;
transparent parts (a subject cut out of its background) are filled with a
background colour, with a warning naming the files; grayscale, palette and
CMYK images are converted to RGB; images smaller
than the training resolution are upscaled (with a warning, since upscaled
images teach blur); files that are not images are skipped by name; a file that
claims to be an image but cannot be decoded stops the run, naming it.
"""

from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import UserError

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}
RECOMMENDED_MINIMUM = 3


def warn(message):
    print(f"warning: {message}")


# Pillow's modes of more than 8 bits per pixel, and the value each one's brightest pixel can have.
HIGH_BIT_DEPTH = {"I;16": 65535, "I;16L": 65535, "I;16B": 65535, "I;16N": 65535, "I": None, "F": None}


def to_8_bits(image):
    """A 16-bit, 32-bit or float grayscale image scaled into 0-255 ('L'), as Pillow's convert("RGB") does
    not do: it clips every value above 255, which turns a 16-bit photo almost white."""
    import numpy as np

    values = np.asarray(image, dtype=np.float64)
    top = HIGH_BIT_DEPTH[image.mode]
    if top is None:  # 32-bit integers or floats: read their range from the values
        largest = float(values.max()) if values.size else 0.0
        top = 1.0 if image.mode == "F" and largest <= 1.0 else 255 if largest <= 255 else 65535 if largest <= 65535 \
            else 2 ** 32 - 1
    return Image.fromarray(np.clip(values / top * 255, 0, 255).round().astype(np.uint8))


def has_transparency(image):
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def flattened(image, background):
    """(RGB image, whether any pixel was transparent): transparent parts filled with `background`,
    where convert("RGB") would leave whatever colour the transparent pixels hold (often black)."""
    if image.mode in HIGH_BIT_DEPTH:
        return to_8_bits(image).convert("RGB"), False
    if not has_transparency(image):
        return image.convert("RGB"), False
    rgba = image.convert("RGBA")
    if rgba.getextrema()[3][0] == 255:  # an alpha channel, but every pixel opaque
        return rgba.convert("RGB"), False
    filled = Image.new("RGBA", rgba.size, (*background, 255))
    filled.alpha_composite(rgba)
    return filled.convert("RGB"), True


def square_crop(image, resolution):
    """Centre-crop to a square and resize to `resolution`, upscaling small images."""
    return ImageOps.fit(image, (resolution, resolution), method=Image.Resampling.BICUBIC)


def load_training_images(folder, resolution, what="instance", alpha_background=(255, 255, 255)):
    """RGB images of `folder` at `resolution` x `resolution`, sorted by file name; transparent parts
    filled with `alpha_background`."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} image folder {folder} does not exist; put your images there or pass --instance-dir")
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    skipped = [path.name for path in files if path.suffix.lower() not in IMAGE_SUFFIXES and path.name != "README.md"]
    if skipped:
        warn(f"skipping files that are not images in {folder}: {', '.join(skipped)}")
    images, small, transparent = [], [], []
    for path in (path for path in files if path.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as opened:
                opened.load()
                image, was_transparent = flattened(ImageOps.exif_transpose(opened), alpha_background)
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise UserError(f"cannot read image {path} ({str(error)[:80]}); replace or remove it") from None
        if was_transparent:
            transparent.append(path.name)
        if min(image.size) < resolution:
            small.append(f"{path.name} ({image.size[0]}x{image.size[1]})")
        images.append(square_crop(image, resolution))
    if not images:
        raise UserError(f"no images in {folder}; add about ten PNG or JPEG pictures of your subject")
    if transparent:
        warn(f"transparent parts filled with RGB {tuple(alpha_background)} (--alpha-background): "
             f"{', '.join(transparent)}")
    if small:
        warn(f"upscaling images smaller than {resolution} px, expect blur: {', '.join(small)}")
    if len(images) < RECOMMENDED_MINIMUM:
        warn(f"only {len(images)} {what} image(s); DreamBooth works best with 3 to 10 of one subject")
    return images

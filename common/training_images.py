"""Reading a folder of training images, forgiving what can be fixed and naming what cannot.

Students drop phone photos, screenshots and stray files into training_images/.
A phone photo is turned upright as its camera recorded (EXIF orientation: the
pixels of a portrait photo are often stored sideways); grayscale, RGBA,
palette and CMYK images are converted to RGB; images smaller
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


def square_crop(image, resolution):
    """Centre-crop to a square and resize to `resolution`, upscaling small images."""
    return ImageOps.fit(image, (resolution, resolution), method=Image.Resampling.BICUBIC)


def load_training_images(folder, resolution, what="instance"):
    """RGB images of `folder` at `resolution` x `resolution`, sorted by file name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UserError(f"{what} image folder {folder} does not exist; put your images there or pass --instance-dir")
    files = sorted(path for path in folder.iterdir() if path.is_file() and not path.name.startswith("."))
    skipped = [path.name for path in files if path.suffix.lower() not in IMAGE_SUFFIXES and path.name != "README.md"]
    if skipped:
        warn(f"skipping files that are not images in {folder}: {', '.join(skipped)}")
    images, small = [], []
    for path in (path for path in files if path.suffix.lower() in IMAGE_SUFFIXES):
        try:
            with Image.open(path) as opened:
                opened.load()
                image = ImageOps.exif_transpose(opened).convert("RGB")  # grayscale, RGBA, palette and CMYK alike
        except (UnidentifiedImageError, OSError, ValueError) as error:
            raise UserError(f"cannot read image {path} ({str(error)[:80]}); replace or remove it") from None
        if min(image.size) < resolution:
            small.append(f"{path.name} ({image.size[0]}x{image.size[1]})")
        images.append(square_crop(image, resolution))
    if not images:
        raise UserError(f"no images in {folder}; add about ten PNG or JPEG pictures of your subject")
    if small:
        warn(f"upscaling images smaller than {resolution} px, expect blur: {', '.join(small)}")
    if len(images) < RECOMMENDED_MINIMUM:
        warn(f"only {len(images)} {what} image(s); DreamBooth works best with 3 to 10 of one subject")
    return images

"""Render the DreamBooth subject's ten instance images into training_images/.

The subject is the world's ninth pattern family (teal and orange eight-pointed
stars on cream) that the micro model's pretraining never saw. The images are
drawn at 512 x 512, so SD 1.5 can train on them too; the micro model reads
them downscaled to 64 px.

    python -m micro.training_images     # writes only the files that are missing
"""

from pathlib import Path

from PIL import Image

from common.saving import save_image
from micro import world

REPO = Path(__file__).resolve().parent.parent
FOLDER = REPO / "training_images"
COUNT = 10


def subject_image(index, size=512):
    """Instance image `index`: a swatch of the subject fabric, shifted differently each time."""
    spec = {"family": "stars", "colours": None, "context": "swatch", "style": "plain"}
    return Image.fromarray(world.render(spec, size, seed=1000 + index))


def main():
    written = 0
    for index in range(COUNT):
        path = FOLDER / f"fabric_{index:02d}.png"
        if path.exists():  # never replace a user's picture
            continue
        save_image(subject_image(index), path)
        written += 1
    print(f"wrote {written} images to {FOLDER} ({COUNT - written} were already there)")


if __name__ == "__main__":
    main()

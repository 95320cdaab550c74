"""Arranging generated images into grids, plain or with titles.

The plain grid is pixel-exact (good for comparing details at full size); the
labelled grid goes through matplotlib so each image can carry its prompt,
guidance scale or seed as a title.
"""

import math
import textwrap

from PIL import Image


def enlarged(image, min_side=256):
    """`image` scaled up by a whole factor until its short side is at least `min_side`, nearest-neighbour,
    so that every pixel the model drew stays one honest square (a 64 px image becomes 256 px)."""
    factor = math.ceil(min_side / min(image.size))
    if factor <= 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.NEAREST)


def image_grid(images, cols=None, padding=0, background=(255, 255, 255)):
    """Paste equally sized PIL images into rows of `cols` (default: a near-square grid)."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width + (cols - 1) * padding, rows * height + (rows - 1) * padding), background)
    for index, image in enumerate(images):
        row, col = divmod(index, cols)
        grid.paste(image.convert("RGB"), (col * (width + padding), row * (height + padding)))
    return grid


def labelled_grid(images, titles, cols=None, suptitle=None, row_labels=None, panel_inches=2.6):
    """A matplotlib figure with one titled panel per image; optional labels down the left side.

    Titles and row labels are wrapped to their panel's width and height, and matplotlib's
    constrained layout makes room for each of them, so that no text overlaps another.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if len(images) != len(titles):
        raise ValueError(f"{len(images)} images but {len(titles)} titles")
    cols = cols or math.ceil(math.sqrt(len(images)))
    rows = math.ceil(len(images) / cols)
    figure, axes = plt.subplots(rows, cols, figsize=(cols * panel_inches, rows * panel_inches + 0.4),
                                squeeze=False, layout="constrained")
    title_width = max(12, round(panel_inches * 12))  # characters of 8 pt text across a panel
    for index, axis in enumerate(axes.flat):
        axis.set_xticks([])
        axis.set_yticks([])
        if index >= len(images):
            axis.axis("off")
            continue
        axis.imshow(images[index])
        axis.set_title("\n".join(textwrap.wrap(titles[index], title_width)), fontsize=8)
    for row, label in enumerate(row_labels or []):
        axes[row][0].set_ylabel("\n".join(textwrap.wrap(label, round(panel_inches * 8))), fontsize=9)
    if suptitle:
        figure.suptitle(suptitle, fontsize=11)
    return figure

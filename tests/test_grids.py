"""common/grids.py: pixel-exact grids, titled grids whose text never overlaps, and honest enlargement."""

import pytest
from PIL import Image

from common.grids import enlarged, image_grid, labelled_grid
from tests.helpers import overlapping_texts


def test_image_grid_shape_and_placement():
    colours = [(i * 20, 0, 0) for i in range(7)]
    images = [Image.new("RGB", (10, 6), colour) for colour in colours]
    grid = image_grid(images, cols=3)
    assert grid.size == (30, 18)
    assert grid.getpixel((25, 8)) == colours[5]  # row 1, column 2
    assert grid.getpixel((25, 14)) == (255, 255, 255)  # the empty ninth cell


def test_image_grid_defaults_to_near_square():
    assert image_grid([Image.new("RGB", (4, 4))] * 9).size == (12, 12)


def test_labelled_grid_has_one_titled_panel_per_image():
    images = [Image.new("RGB", (8, 8))] * 5
    figure = labelled_grid(images, [f"seed {i}" for i in range(5)], cols=3, row_labels=["top", "bottom"])
    titled = [axis for axis in figure.axes if axis.get_title()]
    assert [axis.get_title() for axis in titled] == [f"seed {i}" for i in range(5)]
    assert figure.axes[0].get_ylabel() == "top" and figure.axes[3].get_ylabel() == "bottom"
    with pytest.raises(ValueError):
        labelled_grid(images, ["too few"])


def test_enlarged_keeps_every_pixel_a_square_of_the_same_colour():
    image = Image.new("RGB", (64, 48))
    image.putpixel((5, 7), (255, 0, 0))
    big = enlarged(image)
    assert big.size == (384, 288)  # 6 times: the short side 48 -> 288 >= 256
    assert {big.getpixel((5 * 6 + dx, 7 * 6 + dy)) for dx in range(6) for dy in range(6)} == {(255, 0, 0)}
    assert big.getpixel((5 * 6 + 6, 7 * 6)) == (0, 0, 0)
    assert enlarged(Image.new("RGB", (512, 512))).size == (512, 512)  # large enough already


@pytest.mark.parametrize("layout", ["progress grid", "comparison rows", "with and without", "three by three"])
def test_no_text_overlaps_another_or_leaves_the_figure(layout):
    long_prompt = "a beautiful dress made of sks african fabric pattern, fashion photography"
    images = [Image.new("RGB", (64, 64), (120, 60, 30))] * 12
    figure = {
        "progress grid": lambda: labelled_grid(images[:4], [long_prompt] * 4, cols=4, suptitle="after 800 updates"),
        "comparison rows": lambda: labelled_grid(
            images, ["swatch", "dress", "vase", "watercolor"] * 3, cols=4, suptitle="Same prompts and seeds",
            row_labels=["base model", "TI (3.2 KB, 123 s / 3000 updates)",
                        "LoRA (3.1 MB, 157 s / 800 updates, scale 8.0)"]),
        "with and without": lambda: labelled_grid(
            images[:9] * 2, ["geometric_art"] * 9 + [""] * 9, cols=9, panel_inches=2.0,
            row_labels=["with 'sks <african-fabric>'", "without"], suptitle="Same prompts and seeds, with and without"),
        "three by three": lambda: labelled_grid(images[:9], [long_prompt] * 9, cols=3, suptitle=long_prompt),
    }[layout]()
    assert overlapping_texts(figure) == []


def test_the_loss_figure_text_does_not_overlap():
    from common.training_run import plot_loss_curves

    history = {"total": [0.3, 0.2, 0.1] * 50, "instance": [0.2] * 150, "prior": [0.1] * 150}
    evaluation = {"update": [0, 100, 150], "instance": [0.2, 0.15, 0.12], "class": [0.08, 0.079, 0.078]}
    captured = {}

    def keep(figure, path):
        captured["figure"] = figure
        return path

    import common.saving

    original = common.saving.save_figure
    common.saving.save_figure = keep
    try:
        plot_loss_curves(history, "unused.png", "DreamBooth LoRA: 150 optimizer updates", evaluation)
    finally:
        common.saving.save_figure = original
    assert len(captured["figure"].axes) == 4 and overlapping_texts(captured["figure"]) == []

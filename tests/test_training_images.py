"""common/training_images.py: a folder of a student's images, read forgivingly."""

from PIL import Image


def test_odd_images_are_converted_and_warned_about(tmp_path, capsys):
    from common.training_images import load_training_images

    Image.new("L", (64, 64), 128).save(tmp_path / "gray.png")
    Image.new("RGBA", (64, 64), (10, 20, 30, 0)).save(tmp_path / "alpha.png")
    Image.new("P", (16, 16), 3).save(tmp_path / "palette_small.png")
    Image.new("CMYK", (64, 64), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    images = load_training_images(tmp_path, 32)
    out = capsys.readouterr().out
    assert len(images) == 4 and all(image.mode == "RGB" and image.size == (32, 32) for image in images)
    assert "notes.txt" in out and "palette_small.png (16x16)" in out


def test_fewer_than_three_images_warns(tmp_path, capsys):
    from common.training_images import load_training_images

    Image.new("RGB", (32, 32)).save(tmp_path / "one.png")
    assert len(load_training_images(tmp_path, 32)) == 1
    assert "only 1 instance image" in capsys.readouterr().out


def test_phone_photo_is_turned_upright_by_its_exif_orientation(tmp_path):
    """A portrait phone photo stores its pixels sideways with an EXIF tag saying how to turn them."""
    from common.training_images import load_training_images

    sideways = Image.new("RGB", (64, 32), (255, 0, 0))
    sideways.paste((0, 0, 255), (32, 0, 64, 32))  # stored: red left, blue right
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: turn 90 degrees clockwise to view, so red ends up on top
    sideways.save(tmp_path / "portrait.jpg", exif=exif, quality=95)
    (image,) = load_training_images(tmp_path, 32)
    top, bottom = image.getpixel((16, 2)), image.getpixel((16, 29))
    assert top[0] > 200 > top[2] and bottom[2] > 200 > bottom[0]  # upright: red above blue

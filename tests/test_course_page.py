"""outputs/index.html: every picture it shows is a file beside it, and what is missing says how to make it."""

from html.parser import HTMLParser

from PIL import Image

from common.course_page import COURSE, look_at_html, what_to_look_at, write_course_page
from tests.helpers import TINY, run_main


class PageReader(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.links, self.sections = [], [], []

    def handle_starttag(self, tag, attributes):
        attributes = dict(attributes)
        if tag == "img":
            self.images.append(attributes["src"])
        elif tag == "a":
            self.links.append(attributes["href"])
        elif tag == "section":
            self.sections.append(attributes["id"])


def read_page(path):
    reader = PageReader()
    reader.feed(path.read_text())
    return reader


def test_every_picture_on_the_page_is_a_file_and_missing_ones_name_their_command(tmp_path):
    out = tmp_path / "outputs"
    (out / "training_progress_lora").mkdir(parents=True)
    for name in ["exercise1_output.png", "training_progress_lora/step_00000.png",
                 "training_progress_lora/step_00100.png", "training_progress_lora/step_00200.png"]:
        Image.new("RGB", (8, 8)).save(out / name)
    page = write_course_page(out)
    reader = read_page(page)
    assert reader.sections == [section.script.removesuffix(".py") for section in COURSE]  # course order
    assert sorted(reader.images) == ["exercise1_output.png", "training_progress_lora/step_00000.png",
                                     "training_progress_lora/step_00200.png"]  # the first and last grids
    assert all((out / src).is_file() for src in reader.images)
    text = page.read_text()
    assert "exercise2_style_grid.png: not made yet; <code>python exercise2_explore.py</code> makes it" in text
    assert "<code>python exercise3_compare.py --measure</code> makes it" in text
    for section in COURSE:  # each script's own "what to look at", beside its pictures
        first_path = what_to_look_at(section.script).split()[0]
        assert f"<dt><code>{first_path.replace('<', '&lt;')}</code></dt>" in text
    assert "<script" not in text and "http" not in text  # static, nothing from the network


def test_a_script_rewrites_the_page_with_its_pictures(tiny_pipeline_dir, tiny_lora_dir, tmp_path):
    import exercise1_generate

    out = tmp_path / "out"
    assert run_main(exercise1_generate, ["--base-model", tiny_pipeline_dir, "--lora-dir", tiny_lora_dir,
                                         "--output-dir", out, *TINY]) == 0
    reader = read_page(out / "index.html")
    assert {"exercise1_output.png", "exercise1_with_vs_without_token.png"} <= set(reader.images)
    assert all((out / src).is_file() for src in reader.images)


def test_what_to_look_at_keeps_its_two_columns_apart_when_rewrapped():
    text = ("outputs/a.png      the first picture, whose text\n"
            "                   goes on here\n"
            "outputs/<b>.png    the second\n"
            "\n"
            "A paragraph of prose\n"
            "on two lines.")
    assert look_at_html(text) == (
        "<dl><dt><code>outputs/a.png</code></dt><dd>the first picture, whose text goes on here</dd>"
        "<dt><code>outputs/&lt;b&gt;.png</code></dt><dd>the second</dd></dl>\n"
        "<p>A paragraph of prose on two lines.</p>")

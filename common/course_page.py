"""outputs/index.html: the whole course on one static page, rewritten by every script after it writes.

Each exercise gets a section in course order: its pictures at a readable size, and beside them
the "What to look at" text of that script's own docstring, so the page and the scripts never
disagree. A picture that is not there yet says which command makes it. The page is plain HTML
and CSS (no JavaScript, no network), and every path in it is relative, so it opens from disk.

The docstrings are read from the scripts' source text, not imported: nothing below the
lesson scripts imports them.
"""

import ast
import dataclasses
import html
import os
from pathlib import Path

from common.saving import atomic_write

REPO = Path(__file__).resolve().parent.parent
PAGE = "index.html"


@dataclasses.dataclass
class Section:
    title: str
    script: str
    command: str
    pictures: list  # paths relative to the outputs folder; "folder/" means its first and last step_*.png
    links: list = dataclasses.field(default_factory=list)  # (path, what it is, command that makes it)


COURSE = [
    Section("Exercise 1: the learned fabric in nine contexts", "exercise1_generate.py", "python exercise1_generate.py",
            ["exercise1_output.png", "exercise1_with_vs_without_token.png"]),
    Section("Exercise 2: guidance, styles and seeds", "exercise2_explore.py", "python exercise2_explore.py",
            ["exercise2_guidance_comparison.png", "exercise2_style_grid.png", "exercise2_seed_comparison.png"]),
    Section("Exercise 3a: textual inversion, one new word", "exercise3a_train_textual_inversion.py",
            "python exercise3a_train_textual_inversion.py", ["training_progress_ti/", "exercise3a_loss_curve.png"],
            [("exercise3a_summary.json", "the run's summary", "python exercise3a_train_textual_inversion.py")]),
    Section("Exercise 3b: DreamBooth LoRA with prior preservation", "exercise3b_train_lora.py",
            "python exercise3b_train_lora.py", ["training_progress_lora/", "exercise3b_loss_curves.png"],
            [("exercise3b_summary.json", "the run's summary", "python exercise3b_train_lora.py")]),
    Section("Exercise 3: textual inversion against LoRA", "exercise3_compare.py", "python exercise3_compare.py",
            ["exercise3_ti_vs_lora.png", "exercise3_measured.png"],
            [("exercise3_measured.md", "the measured table, beside the paper's numbers",
              "python exercise3_compare.py --measure")]),
    Section("The morph: a seamless loop through noise space", "generate_dreambooth_morph.py",
            "python generate_dreambooth_morph.py", ["dreambooth_morph.gif"],
            [("dreambooth_morph.gif", "the GIF on its own", "python generate_dreambooth_morph.py")]),
]
# pictures that only one form of a command makes
COMMANDS = {"exercise3_measured.png": "python exercise3_compare.py --measure"}


def what_to_look_at(script):
    """The 'What to look at' section of a script's module docstring (read from its source)."""
    rows = (ast.get_docstring(ast.parse((REPO / script).read_text())) or "").splitlines()
    underlined = [i for i in range(len(rows) - 1) if rows[i + 1].strip() and set(rows[i + 1].strip()) == {"-"}]
    start = next((i for i in underlined if rows[i].strip() == "What to look at"), None)
    if start is None:
        return ""
    end = next((i for i in underlined if i > start), len(rows))
    return "\n".join(rows[start + 2:end]).strip()


def resolve_pictures(outputs, entry):
    """[(relative path, caption)] of one picture entry; a folder gives its first and last step grid."""
    if not entry.endswith("/"):
        return [(entry, entry)]
    steps = sorted((outputs / entry).glob("step_*.png"))
    if not steps:
        return [(entry + "step_NNNNN.png", entry + "step_NNNNN.png")]
    chosen = [steps[0], steps[-1]] if len(steps) > 1 else steps
    return [(path.relative_to(outputs).as_posix(), f"{path.relative_to(outputs).as_posix()}"
             f" ({'first' if path == steps[0] and len(chosen) > 1 else 'last'} progress grid)") for path in chosen]


def look_at_html(text):
    """A docstring's two columns ("path   what it shows", continued on indented lines) as a definition
    list, and its other lines as paragraphs: a narrow column re-wraps them without mixing the two."""
    blocks, entry = [], None  # blocks: ("dl", [[name, text], ...]) or ("p", text)
    for line in text.splitlines():
        name, gap, rest = line.partition("  ")
        if not line.strip():
            entry = None
        elif line[0] == " " and entry is not None:
            entry[1] += " " + line.strip()
        elif gap and not line[0].isspace():
            entry = [name, rest.strip()]
            if not blocks or blocks[-1][0] != "dl":
                blocks.append(("dl", []))
            blocks[-1][1].append(entry)
        elif blocks and blocks[-1][0] == "p":
            blocks[-1] = ("p", blocks[-1][1] + " " + line.strip())
        else:
            blocks.append(("p", line.strip()))
    return "\n".join(
        "<dl>" + "".join(f"<dt><code>{html.escape(n)}</code></dt><dd>{html.escape(t)}</dd>" for n, t in rows) + "</dl>"
        if kind == "dl" else f"<p>{html.escape(rows)}</p>" for kind, rows in blocks)


def section_html(outputs, section):
    parts = [f'<section id="{Path(section.script).stem}">', f"<h2>{html.escape(section.title)}</h2>",
             f"<p class=\"run\">Run: <code>{html.escape(section.command)}</code></p>", '<div class="row">',
             '<div class="pictures">']
    for entry in section.pictures:
        for relative, caption in resolve_pictures(outputs, entry):
            if (outputs / relative).is_file():
                parts.append(f'<figure><a href="{html.escape(relative)}"><img src="{html.escape(relative)}" '
                             f'alt="{html.escape(caption)}"></a><figcaption>{html.escape(caption)}</figcaption></figure>')
            else:
                command = COMMANDS.get(relative, section.command)
                parts.append(f'<p class="missing">{html.escape(relative)}: not made yet; '
                             f'<code>{html.escape(command)}</code> makes it</p>')
    parts.append("</div>")
    parts.append(f'<aside><h3>What to look at</h3>{look_at_html(what_to_look_at(section.script))}')
    for relative, what, command in section.links:
        if (outputs / relative).is_file():
            parts.append(f'<p><a href="{html.escape(relative)}">{html.escape(relative)}</a>: {html.escape(what)}</p>')
        else:
            parts.append(f'<p class="missing">{html.escape(relative)} ({html.escape(what)}): not made yet; '
                         f'<code>{html.escape(command)}</code> makes it</p>')
    parts += ["</aside>", "</div>", "</section>"]
    return "\n".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1400px;margin:2em auto;padding:0 1em;color:#222}
h1{margin-bottom:0.2em} section{border-top:1px solid #ccc;padding:1em 0}
.row{display:flex;gap:2em;align-items:flex-start;flex-wrap:wrap}
.pictures{flex:3;min-width:420px} aside{flex:2;min-width:320px;background:#f6f4ef;padding:0.5em 1em}
figure{margin:0 0 1.2em 0} img{max-width:100%;width:820px;image-rendering:pixelated;border:1px solid #ddd}
figcaption{font-size:0.85em;color:#555} dt{margin-top:0.6em} dd{margin:0.2em 0 0 1.2em}
.missing{color:#a33} code{background:#eee;padding:0 0.3em}"""


def write_course_page(outputs_dir):
    """Write <outputs_dir>/index.html from what is in outputs_dir now; returns its path."""
    outputs = Path(outputs_dir)
    docs = Path(os.path.relpath(REPO / "docs", outputs)).as_posix()
    sections = "\n".join(section_html(outputs, section) for section in COURSE)
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>DreamBooth: the course's pictures</title>
<style>{STYLE}</style></head><body>
<h1>DreamBooth: Personalizing Diffusion Models</h1>
<p>Every picture the course's scripts have made so far, in course order, beside what to look at in it.
Each script rewrites this page after it writes. Measurements: <a href="{docs}/micro_model.md">docs/micro_model.md</a>,
<a href="{docs}/performance.md">docs/performance.md</a>.</p>
{sections}
</body></html>
"""
    return atomic_write(outputs / PAGE, lambda temp: Path(temp).write_text(page))

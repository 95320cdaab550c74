"""Exercise 1: a personalised model draws "sks african fabric pattern" in nine contexts.

What this teaches
-----------------
DreamBooth binds a rare word, "sks", to a subject seen in only ten images.
Once bound, the word can be dropped into any sentence the base model already
understands ("a dress made of ...", "a ceramic vase with ..."), and the model
paints the learned fabric into that context. Nothing here is trained: we load
the base model, add the learned adapter, and ask.

What to look at
---------------
outputs/exercise1_output.png                 the nine contexts, titled with their prompts
outputs/exercise1_grid_simple.png            the same nine, pixel for pixel, no titles (on micro each
                                             pixel a 4x4 square: 64 px images enlarged to 256)
outputs/exercise1_variations/NN_<slug>.png   each image on its own
outputs/exercise1_with_vs_without_token.png  top row with "sks", bottom row without,
                                             same seeds: what does the token add?

Run it
------
    python exercise1_generate.py                      # release LoRA in models/fabric_lora
    python exercise1_generate.py --lora-dir none      # the base model alone, for comparison
"""

from common import prompts
from common.cli import make_parser
from common.course_page import write_course_page
from common.errors import run_script
from common.generation import generate
from common.grids import enlarged, image_grid, labelled_grid
from common.pipeline import load_personalized_pipeline, subject_token
from common.saving import save_figure, save_image

# ---------------------------------------------------------------------------
# Configuration: the nine contexts of the course, file name -> prompt, such as
# "handbag": "a handbag made of {subject}, product photography". "{subject}"
# becomes "sks african fabric pattern" (or the textual-inversion token, see
# --help). Every prompt of the course lives in common/prompts.py.
# ---------------------------------------------------------------------------
CONTEXTS = prompts.CONTEXTS
SUBJECT_CLASS = prompts.SUBJECT_CLASS  # "african fabric pattern"


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n")[0])
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)

    # -----------------------------------------------------------------------
    # Step 1: load the base model and the learned adapter. The banner line
    # says how many LoRA layers landed and at which scale; if that number is
    # missing, the model below is the plain base model, whatever it draws.
    # -----------------------------------------------------------------------
    pipe, adapters = load_personalized_pipeline(args)
    token = subject_token(adapters, args.token)
    subject = f"{token} {SUBJECT_CLASS}"
    prompts = [template.format(subject=subject) for template in CONTEXTS.values()]
    seeds = [args.seed + index for index in range(len(prompts))]
    settings = dict(steps=args.steps, resolution=args.resolution, guidance=args.guidance,
                    negative_prompt=args.negative_prompt, batch_size=args.batch_size)

    # -----------------------------------------------------------------------
    # Step 2: one image per context. Seeds 42, 43, ... make every run repeatable.
    # -----------------------------------------------------------------------
    images = generate(pipe, prompts, seeds, desc="contexts", **settings)

    # -----------------------------------------------------------------------
    # Step 3: the same prompts and seeds without the subject token
    # (reflection question 2). Only the words differ, so whatever changes
    # between the two rows is what the token learned.
    # -----------------------------------------------------------------------
    plain_prompts = [template.format(subject=SUBJECT_CLASS) for template in CONTEXTS.values()]
    plain_images = generate(pipe, plain_prompts, seeds, desc="without token", **settings)

    # -----------------------------------------------------------------------
    # Step 4: save the pictures. Small ones (micro's 64 px) are enlarged to at
    # least 256 px, each drawn pixel a square, so that they can be looked at.
    # -----------------------------------------------------------------------
    out = args.output_dir
    for index, (name, image) in enumerate(zip(CONTEXTS, images), start=1):
        save_image(enlarged(image), out / "exercise1_variations" / f"{index:02d}_{name}.png")
    save_image(image_grid([enlarged(image) for image in images], cols=3), out / "exercise1_grid_simple.png")
    save_figure(labelled_grid(images, prompts, cols=3,
                              suptitle=f"Exercise 1: {subject} in nine contexts"),
                out / "exercise1_output.png")
    save_figure(labelled_grid(images + plain_images, list(CONTEXTS) + [""] * len(CONTEXTS), cols=len(prompts),
                              row_labels=[f"with '{token}'", "without"], panel_inches=2.0,
                              suptitle=f"Same prompts and seeds, with and without '{token}'"),
                out / "exercise1_with_vs_without_token.png")
    print(f"wrote {out / 'exercise1_output.png'}, {out / 'exercise1_grid_simple.png'}, "
          f"{out / 'exercise1_with_vs_without_token.png'} and {len(images)} images in {out / 'exercise1_variations'}")
    write_course_page(out)  # outputs/index.html: the course's pictures so far, on one page


if __name__ == "__main__":
    run_script(main)

"""Exercise 2: how guidance, style words and seeds shape a personalised image.

What this teaches
-----------------
Part A, guidance scale. Classifier-free guidance runs the UNet twice per step,
with and without the prompt, and pushes the result away from the
unconditioned guess by a factor s:  eps = eps(empty) + s * (eps(prompt) - eps(empty)).
s = 1.5 barely listens to the prompt, 7.5 is the usual balance, and 20 follows
it so hard that colours burn and shapes turn stiff.

Part B, style words. The learned fabric is a word like any other, so it can be
combined with styles the base model already knows ("an oil painting of ...").

Part C, seeds. The seed fixes the starting noise. Across nine seeds, what stays
the same is what the model learned; what changes is what noise decides.

What to look at
---------------
outputs/exercise2_guidance_comparison.png   one prompt, one seed, guidance 1.5 ... 20
outputs/exercise2_style_grid.png            nine styles, seed 42
outputs/exercise2_seed_comparison.png       one prompt, nine seeds

Run it
------
    python exercise2_explore.py                    # all three parts
    python exercise2_explore.py --part a           # only the guidance sweep
    python exercise2_explore.py --negative-prompt "blurry, distorted"
"""

from common import prompts
from common.cli import make_parser
from common.course_page import write_course_page
from common.errors import run_script
from common.generation import generate
from common.grids import labelled_grid
from common.pipeline import load_personalized_pipeline, subject_token
from common.saving import save_figure

# ---------------------------------------------------------------------------
# Configuration (the prompts themselves live in common/prompts.py)
# ---------------------------------------------------------------------------
GUIDANCE_PROMPT = prompts.GUIDANCE_PROMPT  # "a beautiful dress made of {subject}, fashion photography"
GUIDANCE_SCALES = [1.5, 3.0, 7.5, 12.0, 20.0]
STYLES = prompts.STYLES  # title -> prompt, e.g. "oil painting": "an oil painting of {subject}"
SEED_PROMPT = prompts.SEED_PROMPT  # "a {subject}, vibrant colors, high quality fabric swatch"
STUDY_SEEDS = [1, 42, 100, 256, 512, 777, 999, 1234, 2048]
SUBJECT_CLASS = prompts.SUBJECT_CLASS


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["a", "b", "c", "all"], default="all",
                        help="a: guidance sweep (ignores --guidance), b: style grid, "
                             "c: seed study (ignores --seed)")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    parts = "abc" if args.part == "all" else args.part

    # -----------------------------------------------------------------------
    # Load the base model and the learned adapter once for all three parts.
    # -----------------------------------------------------------------------
    pipe, adapters = load_personalized_pipeline(args)
    subject = f"{subject_token(adapters, args.token)} {SUBJECT_CLASS}"
    common = dict(steps=args.steps, resolution=args.resolution, negative_prompt=args.negative_prompt,
                  batch_size=args.batch_size)
    out = args.output_dir
    written = []

    # -----------------------------------------------------------------------
    # Part A: one prompt and one seed; only the guidance scale changes.
    # -----------------------------------------------------------------------
    if "a" in parts:
        prompt = GUIDANCE_PROMPT.format(subject=subject)
        images = generate(pipe, [prompt] * len(GUIDANCE_SCALES), [args.seed] * len(GUIDANCE_SCALES),
                          guidance=GUIDANCE_SCALES, desc="A: guidance", **common)
        written.append(save_figure(labelled_grid(
            images, [f"guidance {scale}" for scale in GUIDANCE_SCALES], cols=len(images),
            suptitle=f"'{prompt}', seed {args.seed}"), out / "exercise2_guidance_comparison.png"))

    # -----------------------------------------------------------------------
    # Part B: the same seed in nine styles. Same noise, different words.
    # -----------------------------------------------------------------------
    if "b" in parts:
        prompts = [template.format(subject=subject) for template in STYLES.values()]
        images = generate(pipe, prompts, [args.seed] * len(prompts), guidance=args.guidance,
                          desc="B: styles", **common)
        written.append(save_figure(labelled_grid(
            images, list(STYLES), cols=3, suptitle=f"'{subject}' in nine styles, seed {args.seed}"),
            out / "exercise2_style_grid.png"))

    # -----------------------------------------------------------------------
    # Part C: one prompt, nine seeds. Consistency vs diversity.
    # -----------------------------------------------------------------------
    if "c" in parts:
        prompt = SEED_PROMPT.format(subject=subject)
        images = generate(pipe, [prompt] * len(STUDY_SEEDS), STUDY_SEEDS, guidance=args.guidance,
                          desc="C: seeds", **common)
        written.append(save_figure(labelled_grid(
            images, [f"seed {seed}" for seed in STUDY_SEEDS], cols=3, suptitle=f"'{prompt}'"),
            out / "exercise2_seed_comparison.png"))

    print("wrote " + ", ".join(str(path) for path in written))
    write_course_page(out)  # outputs/index.html: the course's pictures so far, on one page


if __name__ == "__main__":
    run_script(main)

"""Exercise 3, step 4: textual inversion vs LoRA, side by side.

What this teaches
-----------------
Same prompts, same seeds, three models: the base model, the base model plus
the learned word (textual inversion), and the base model plus the LoRA. TI can
only steer a frozen UNet with one new word, so it catches what that UNet can
already draw (on micro: the subject's orange and cream, but neither its teal,
a colour the base never drew, nor the stars' points, docs/micro_model.md);
the LoRA changes the UNet itself and so reaches further (on micro, the teal).
Each row's title gives what it cost: file size and training time.

With --measure it reproduces the DreamBooth paper's evaluation instead: base,
textual inversion, LoRA with and without prior preservation, each asked the
paper's three kinds of prompt (new contexts, colours, styles) over 4 seeds and
scored for subject fidelity (how close the pictures come to the instance
images), prompt fidelity (whether they show what was asked), PRES (how far the
class prompt drifted toward the subject) and DIV (how varied one prompt's
pictures are). On micro the judge scores them; on Stable Diffusion, CLIP
(CLIP-I, CLIP-T) and DINO, as in the paper, from the local cache.
An adapter that is missing is trained first, with the trainers' defaults.

What to look at
---------------
outputs/exercise3_ti_vs_lora.png    rows base / TI / LoRA
outputs/exercise3_measured.md       with --measure: the table, beside the paper's numbers
outputs/exercise3_measured.png      with --measure: one group of bars per measure

Run it (after exercise3a and exercise3b)
------
    python exercise3_compare.py
    python exercise3_compare.py --measure
    (on a CUDA GPU the base is SD 1.5, and --measure needs CLIP in the Hugging Face cache)
"""

import json
from pathlib import Path

from common.adapters import fuse_lora, load_lora, load_textual_inversion, read_lora, read_textual_inversion
from common.cli import make_parser, resolve_batch_size
from common.clip_dino import CLIP_MODEL, DINO_MODEL
from common.course_page import write_course_page
from common.device import pick_device
from common.errors import run_script
from common.generation import generate
from common.grids import labelled_grid
from common.base_model import resolve_base
from common.pipeline import load_pipeline, print_banner
from common.prompts import COMPARE_CONTEXTS as CONTEXTS, IDENTIFIER, SUBJECT_CLASS
from common.saving import check_writable, save_figure


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n")[0])
    # What the trainers wrote for this base (auto: models/micro_trained/... on micro).
    parser.set_defaults(ti_file="auto")
    parser.add_argument("--measure", action="store_true",
                        help="measure base, TI and LoRA with and without prior preservation as the DreamBooth "
                             "paper does (the judge on micro, CLIP and DINO otherwise), training whichever "
                             "adapter is missing; the adapters come from --adapters-root (--lora-dir, --ti-file, "
                             "--lora-weight and --token are for the side-by-side picture)")
    parser.add_argument("--adapters-root", default="auto",
                        help="with --measure: the folder whose fabric_textual_inversion/, fabric_lora/ and "
                             "fabric_lora_no_prior/ are measured and where a missing one is trained, with its "
                             "class images (auto: the trainers' folders, and on micro the shipped adapters where "
                             "they have none)")
    parser.add_argument("--clip-model", default="auto",
                        help="with --measure: CLIP for CLIP-I and CLIP-T, a folder or a hub id already in the "
                             f"local cache (auto: {CLIP_MODEL}, or none on micro, whose judge scores); 'none' "
                             "leaves it out")
    parser.add_argument("--dino-model", default=DINO_MODEL,
                        help="with --measure and CLIP: DINO for the paper's subject fidelity, left out with a "
                             "note when it is not on this machine; 'none' leaves it out")
    parser.add_argument("--instance-dir", type=Path, default=Path("training_images"),
                        help="with --measure: the real images every picture is compared with, and that a "
                             "missing adapter is trained on (your own photos work too; the judge knows only "
                             "micro's fabric world, the colour score anything)")
    parser.add_argument("--training-seeds", type=int, nargs="+", default=[0],
                        help="with --measure: each method trained and measured once per seed, reported as "
                             "mean ± spread; seed 0 uses the trainers' (or the shipped) adapters")
    return parser.parse_args(argv)


def cost(summary_path, files):
    """'3.1 KB, 95 s of training' from a trainer's summary JSON (size alone if there is none)."""
    size = sum(path.stat().st_size for path in files)
    text = f"{size / 1024:.1f} KB" if size < 1024 ** 2 else f"{size / 1024 ** 2:.1f} MB"
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        text += f", {summary['wall_seconds']:.0f} s / {summary['optimizer_updates']} updates"
    return text


def adapter_or_train(trained, shipped, script, flags, output_dir):
    """The trainer's adapter if it wrote one, else the shipped one, else train it now (its defaults)."""
    import subprocess
    import sys

    if trained.exists():
        return trained, output_dir
    if shipped is not None and shipped.exists():
        return shipped, None
    from common.errors import UserError

    print(f"no adapter at {trained}: training it with {script} {' '.join(flags)}")
    result = subprocess.run([sys.executable, script, "--output-dir", str(output_dir), *flags],
                            cwd=Path(__file__).resolve().parent)
    if result.returncode != 0:  # the trainer has printed its own error above
        raise UserError(f"training the missing adapter with {script} failed (exit code {result.returncode}); "
                        f"run it yourself with the flags above to see why, then measure again")
    return trained, output_dir


def method_adapters(args, training_seed):
    """{method: (adapter, its training summary or None)} for one training seed, training what is missing."""
    from common.base_model import MICRO, REPO, adapter_defaults

    default_root = Path(adapter_defaults(args.base_model)["trained_lora"]).resolve().parent
    root = default_root if args.adapters_root == "auto" else Path(args.adapters_root).resolve()
    # micro ships its TI and LoRA trained with seed 0: a fresh clone measures them instead of training.
    shipped = REPO / "models" / "micro_release" if (
        args.base_model == MICRO and args.adapters_root == "auto" and training_seed == 0) else None
    training = args.output_dir / "exercise3_measured_training" / f"seed{training_seed}"
    folder = root if training_seed == 0 else root / "measured" / f"seed{training_seed}"
    # A missing adapter learns from the same images it will be compared with.
    flags = ["--base-model", args.base_model, "--seed", str(training_seed),
             "--instance-dir", str(Path(args.instance_dir).resolve())]
    # With a root of its own, everything the run trains stays under it, the LoRAs' class images too.
    lora_flags = flags + (["--class-dir", str(root / "class_images")] if args.adapters_root != "auto" else [])
    ti, ti_out = adapter_or_train(
        folder / "fabric_textual_inversion" / "learned_embeds.safetensors",
        shipped and shipped / "fabric_textual_inversion" / "learned_embeds.safetensors",
        "exercise3a_train_textual_inversion.py", [*flags, "--adapter-dir", str(folder / "fabric_textual_inversion")],
        training / "ti")
    lora, lora_out = adapter_or_train(
        folder / "fabric_lora" / "adapter_model.safetensors",
        shipped and shipped / "fabric_lora" / "adapter_model.safetensors",
        "exercise3b_train_lora.py", [*lora_flags, "--adapter-dir", str(folder / "fabric_lora")], training / "lora")
    no_prior, no_prior_out = adapter_or_train(
        folder / "fabric_lora_no_prior" / "adapter_model.safetensors", None, "exercise3b_train_lora.py",
        [*lora_flags, "--no-prior-preservation", "--adapter-dir", str(folder / "fabric_lora_no_prior")],
        training / "no_prior")
    return {"base model": (None, None),
            "textual inversion": (ti, ti_out / "exercise3a_summary.json" if ti_out else None),
            "LoRA, prior preservation": (lora.parent, lora_out / "exercise3b_summary.json" if lora_out else None),
            "LoRA, no prior preservation": (no_prior.parent,
                                            no_prior_out / "exercise3b_summary.json" if no_prior_out else None)}


def load_scorers(args, device):
    """(judge, clip, dino): micro's judge on micro, CLIP (and DINO when it is on this machine) elsewhere or
    when --clip-model names one; a scorer left out is None."""
    from common.base_model import MICRO
    from common.clip_dino import CLIP_MODEL, load_clip, load_dino
    from common.errors import UserError

    judge = None
    if args.base_model == MICRO:
        from micro.judge import JUDGE_FILE, load_judge

        if not JUDGE_FILE.is_file():
            raise UserError(f"the micro model's judge is missing from {JUDGE_FILE}; restore it with git checkout")
        judge = load_judge()
    clip_model = args.clip_model if args.clip_model != "auto" else ("none" if judge else CLIP_MODEL)
    if judge is None and clip_model == "none":
        raise UserError("--measure needs a scorer: the judge exists for micro only, so on this base leave "
                        "--clip-model at auto or name a CLIP model")
    clip = load_clip(clip_model, device) if clip_model != "none" else None
    dino = load_dino(args.dino_model, device) if clip is not None and args.dino_model != "none" else None
    return judge, clip, dino


def measure(args, device, dtype, where):
    """The paper's table: every method asked the same prompts and seeds, scored by micro's judge on micro
    and by CLIP (and DINO) on Stable Diffusion."""
    from common import paper_evaluation, paper_report
    from common.saving import save_json, save_text
    from common.training_images import load_training_images
    from micro import paper_table

    judge, clip, dino = load_scorers(args, device)  # first: a scorer missing stops the run before any training
    instance_images = load_training_images(args.instance_dir, 64 if judge else args.resolution)
    seeds = range(4)
    # Every missing adapter is trained first, each in a trainer process of its own, while this one holds
    # no pipeline (on a GPU the trainer then has its memory to itself).
    adapters_by_seed = {training_seed: method_adapters(args, training_seed) for training_seed in args.training_seeds}
    rows = {}
    for training_seed, adapters in adapters_by_seed.items():
        for name, (adapter, summary) in adapters.items():
            if name == "base model" and name in rows:
                continue  # nothing trained: the same for every training seed
            pipe = None  # the previous method's pipeline goes before the next one loads
            pipe = load_pipeline(where, device, dtype)
            pipe.set_progress_bar_config(disable=True)
            word = IDENTIFIER
            if name == "textual inversion":
                word = load_textual_inversion(pipe, adapter).token
            elif adapter is not None:
                load_lora(pipe, adapter)
            subject, label = f"{word} {SUBJECT_CLASS}", f"{name}, seed {training_seed}"
            if judge is not None:
                row = paper_table.measure(pipe, judge, instance_images, subject, seeds=seeds, steps=args.steps,
                                          guidance=args.guidance, name=label, clip=clip, dino=dino)
            else:
                row = paper_evaluation.measure(pipe, clip, dino, instance_images, subject, seeds=seeds,
                                               steps=args.steps, resolution=args.resolution, guidance=args.guidance,
                                               batch_size=args.batch_size, negative_prompt=args.negative_prompt,
                                               name=label)
            if adapter is not None:  # the weights it adds: a word's vector, or the LoRA (and its identifier's)
                files = [adapter] if adapter.is_file() else [*adapter.glob("adapter_model.safetensors"),
                                                             *adapter.glob("text_encoder/adapter_model.safetensors"),
                                                             *adapter.glob("identifier_embeddings.safetensors")]
                row["adapter_bytes"] = sum(path.stat().st_size for path in files)
            if summary is not None and summary.is_file():
                row["training_seconds"] = json.loads(summary.read_text())["seconds_by_phase"]["training"]
            rows.setdefault(name, []).append(row)

    bounds, scorers = {}, []
    if judge is not None:
        bounds.update(paper_table.real_bound(judge, instance_images))
        scorers.append("its judge")
        prompts = len(paper_table.prompt_set("x"))
    else:
        prompts = len(paper_evaluation.prompt_set())
    if clip is not None:
        bounds.update(paper_evaluation.real_bounds(clip, dino, instance_images))
        scorers += [f"CLIP ({clip.name})"] + ([f"DINO ({dino.name})"] if dino else [])
    model = "the micro model" if judge else args.base_model
    report = {"about": f"Measured on {model} with {' and '.join(scorers)}: {prompts} prompts x {len(seeds)} seeds, "
                       f"{args.steps} steps, guidance {args.guidance}, training seeds "
                       f"{' '.join(map(str, args.training_seeds))}",
              "real_vs_real": bounds,
              "methods": {name: paper_report.combine(runs) for name, runs in rows.items()}}
    out = args.output_dir
    save_json(report, out / "exercise3_measured.json")
    save_text(paper_report.markdown(report), out / "exercise3_measured.md")
    save_figure(paper_report.chart(report, f"The DreamBooth paper's measures on {model} "
                                           "(higher PRES: the class drifted toward the subject)"),
                out / "exercise3_measured.png")
    print(paper_report.markdown(report))
    print(f"wrote {out / 'exercise3_measured.md'}, {out / 'exercise3_measured.json'}, {out / 'exercise3_measured.png'}")
    write_course_page(out)  # outputs/index.html: the course's pictures so far, on one page


def main(argv=None):
    args = parse_args(argv)
    device, dtype = pick_device(args.device, args.precision, args.threads)
    base, where = resolve_base(args, device, role="trained_lora")
    resolve_batch_size(args, device)  # after the resolution: small images go in larger batches
    check_writable(args.output_dir, "--output-dir")
    if args.measure:
        args.base_model = base
        return measure(args, device, dtype, where)
    lora = read_lora(args.lora_dir)
    read_textual_inversion(args.ti_file)
    pipe = load_pipeline(where, device, dtype)
    print_banner(base, args.resolution, device, str(dtype).removeprefix("torch."),
                 f"compares TI {args.ti_file} and LoRA {args.lora_dir}",
                 f"picture to {args.output_dir / 'exercise3_ti_vs_lora.png'}")
    seeds = [args.seed + index for index in range(len(CONTEXTS))]
    settings = dict(steps=args.steps, resolution=args.resolution, guidance=args.guidance,
                    negative_prompt=args.negative_prompt, batch_size=args.batch_size)

    # Row 1: the base model, asked with the words it has never learned.
    word = args.token or IDENTIFIER
    base_prompts = [template.format(subject=f"{word} {SUBJECT_CLASS}") for template in CONTEXTS.values()]
    rows = [("base model", base_prompts, generate(pipe, base_prompts, seeds, desc="base", **settings))]

    # Row 2: the same prompts with the textual-inversion word.
    ti = load_textual_inversion(pipe, args.ti_file)
    ti_prompts = [template.format(subject=f"{ti.token} {SUBJECT_CLASS}") for template in CONTEXTS.values()]
    rows.append((f"TI ({cost(args.output_dir / 'exercise3a_summary.json', [Path(args.ti_file)])})", ti_prompts,
                 generate(pipe, ti_prompts, seeds, desc="TI", **settings)))

    # Row 3: the LoRA with "sks" (the TI word is not in these prompts, so it stays silent).
    adapter = load_lora(pipe, lora, weight=args.lora_weight)
    fuse_lora(pipe)  # drawn at one strength from here on: fused, it costs no time
    lora_files = [lora.location / "adapter_model.safetensors"] if lora.kind == "peft" else [lora.location]
    rows.append((f"LoRA ({cost(args.output_dir / 'exercise3b_summary.json', lora_files)}, scale {adapter.scale})",
                 base_prompts, generate(pipe, base_prompts, seeds, desc="LoRA", **settings)))

    images = [image for _, _, row in rows for image in row]
    titles = list(CONTEXTS) * len(rows)
    figure = labelled_grid(images, titles, cols=len(CONTEXTS), row_labels=[label for label, _, _ in rows],
                           suptitle="Same prompts and seeds: base / textual inversion / LoRA")
    path = save_figure(figure, args.output_dir / "exercise3_ti_vs_lora.png")
    print(f"wrote {path}")
    write_course_page(args.output_dir)  # outputs/index.html: the course's pictures so far, on one page


if __name__ == "__main__":
    run_script(main)

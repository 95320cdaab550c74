"""Exercise 3, step 4: textual inversion vs LoRA, side by side.

What this teaches
-----------------
Same prompts, same seeds, three models: the base model, the base model plus
the learned word (textual inversion), and the base model plus the LoRA. TI can
only steer a frozen UNet with one new word, so it catches what that UNet can
already draw (on micro: the subject's layout and cream ground, but not its
teal, docs/micro_model.md); the LoRA changes the UNet's attention and so
reaches the subject's detail and colours.
Each row's title gives what it cost: file size and training time.

With --measure (micro model) it reproduces the DreamBooth paper's evaluation
instead: base, textual inversion, LoRA with and without prior preservation,
each asked 22 prompts (new contexts, colours, styles) over 4 seeds, scored by
the judge for subject fidelity, prompt fidelity, PRES (how far the class prompt
drifted toward the subject) and DIV (how varied one prompt's pictures are).
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
"""

import json
from pathlib import Path

from common.adapters import fuse_lora, load_lora, load_textual_inversion, read_lora, read_textual_inversion
from common.cli import make_parser, resolve_batch_size
from common.device import pick_device
from common.errors import run_script
from common.generation import generate
from common.grids import labelled_grid
from common.base_model import resolve_base
from common.pipeline import load_pipeline, print_banner
from common.prompts import COMPARE_CONTEXTS as CONTEXTS, IDENTIFIER, SUBJECT_CLASS
from common.saving import save_figure


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n")[0])
    # What the trainers wrote for this base (auto: models/micro_trained/... on micro).
    parser.set_defaults(ti_file="auto")
    parser.add_argument("--measure", action="store_true",
                        help="measure base, TI and LoRA with and without prior preservation with the judge "
                             "(micro model), training whichever adapter is missing")
    parser.add_argument("--instance-dir", type=Path, default=Path("training_images"),
                        help="with --measure: the real images every picture is compared with (your own photos "
                             "work too; the judge knows only micro's fabric world, the colour score anything)")
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
    result = subprocess.run([sys.executable, script, "--base-model", "micro", "--output-dir", str(output_dir), *flags],
                            cwd=Path(__file__).resolve().parent)
    if result.returncode != 0:  # the trainer has printed its own error above
        raise UserError(f"training the missing adapter with {script} failed (exit code {result.returncode}); "
                        f"run it yourself with the flags above to see why, then measure again")
    return trained, output_dir


def method_adapters(args, training_seed):
    """{method: (adapter, its training summary or None)} for one training seed, training what is missing."""
    from common.base_model import REPO

    trained, shipped = REPO / "models" / "micro_trained", REPO / "models" / "micro_release"
    training = args.output_dir / "exercise3_measured_training" / f"seed{training_seed}"
    folder = trained if training_seed == 0 else trained / "measured" / f"seed{training_seed}"
    seed = ["--seed", str(training_seed)]
    ti, ti_out = adapter_or_train(
        folder / "fabric_textual_inversion" / "learned_embeds.safetensors",
        shipped / "fabric_textual_inversion" / "learned_embeds.safetensors" if training_seed == 0 else None,
        "exercise3a_train_textual_inversion.py", [*seed, "--adapter-dir", str(folder / "fabric_textual_inversion")],
        training / "ti")
    lora, lora_out = adapter_or_train(
        folder / "fabric_lora" / "adapter_model.safetensors",
        shipped / "fabric_lora" / "adapter_model.safetensors" if training_seed == 0 else None,
        "exercise3b_train_lora.py", [*seed, "--adapter-dir", str(folder / "fabric_lora")], training / "lora")
    no_prior, no_prior_out = adapter_or_train(
        folder / "fabric_lora_no_prior" / "adapter_model.safetensors", None, "exercise3b_train_lora.py",
        [*seed, "--no-prior-preservation", "--adapter-dir", str(folder / "fabric_lora_no_prior")],
        training / "no_prior")
    return {"base model": (None, None),
            "textual inversion": (ti, ti_out / "exercise3a_summary.json" if ti_out else None),
            "LoRA, prior preservation": (lora.parent, lora_out / "exercise3b_summary.json" if lora_out else None),
            "LoRA, no prior preservation": (no_prior.parent,
                                            no_prior_out / "exercise3b_summary.json" if no_prior_out else None)}


def measure(args, device, dtype):
    """The paper's table on the micro world: every method asked the same prompts and seeds."""
    from common.adapters import load_lora, load_textual_inversion
    from common.base_model import MICRO_FOLDER
    from common.errors import UserError
    from common.saving import save_json, save_text
    from common.training_images import load_training_images
    from micro import paper_table
    from micro.judge import JUDGE_FILE, load_judge

    if args.base_model != "micro" or not JUDGE_FILE.is_file():
        raise UserError("--measure scores pictures with the micro model's judge: run it with --base-model micro")
    judge = load_judge()
    instance_images = load_training_images(args.instance_dir, 64)
    seeds = range(4)
    rows = {}
    for training_seed in args.training_seeds:
        for name, (adapter, summary) in method_adapters(args, training_seed).items():
            if name == "base model" and name in rows:
                continue  # nothing trained: the same for every training seed
            pipe = load_pipeline(str(MICRO_FOLDER), device, dtype)
            pipe.set_progress_bar_config(disable=True)
            word = "sks"
            if name == "textual inversion":
                word = load_textual_inversion(pipe, adapter).token
            elif adapter is not None:
                load_lora(pipe, adapter)
            row = paper_table.measure(pipe, judge, instance_images, f"{word} african fabric pattern", seeds=seeds,
                                      steps=args.steps, guidance=args.guidance, name=f"{name}, seed {training_seed}")
            if adapter is not None:  # the weights it adds: a word's vector, or the LoRA (and its identifier's)
                files = [adapter] if adapter.is_file() else [*adapter.glob("adapter_model.safetensors"),
                                                             *adapter.glob("text_encoder/adapter_model.safetensors"),
                                                             *adapter.glob("identifier_embeddings.safetensors")]
                row["adapter_bytes"] = sum(path.stat().st_size for path in files)
            if summary is not None and summary.is_file():
                row["training_seconds"] = json.loads(summary.read_text())["seconds_by_phase"]["training"]
            rows.setdefault(name, []).append(row)
    report = {"about": f"{len(paper_table.prompt_set('x'))} prompts x {len(seeds)} seeds, {args.steps} steps, "
                       f"guidance {args.guidance}, training seeds {' '.join(map(str, args.training_seeds))}",
              "real_vs_real": paper_table.real_bound(judge, instance_images),
              "methods": {name: paper_table.combine(runs) for name, runs in rows.items()}}
    out = args.output_dir
    save_json(report, out / "exercise3_measured.json")
    save_text(paper_table.markdown(report), out / "exercise3_measured.md")
    save_figure(paper_table.chart(report), out / "exercise3_measured.png")
    print(paper_table.markdown(report))
    print(f"wrote {out / 'exercise3_measured.md'}, {out / 'exercise3_measured.json'}, {out / 'exercise3_measured.png'}")


def main(argv=None):
    args = parse_args(argv)
    device, dtype = pick_device(args.device, args.precision, args.threads)
    resolve_batch_size(args, device)
    base, where = resolve_base(args, device, role="trained_lora")
    if args.measure:
        args.base_model = base
        return measure(args, device, dtype)
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
    base_prompts = [template.format(subject=f"{IDENTIFIER} {SUBJECT_CLASS}") for template in CONTEXTS.values()]
    rows = [("base model", base_prompts, generate(pipe, base_prompts, seeds, desc="base", **settings))]

    # Row 2: the same prompts with the textual-inversion word.
    ti = load_textual_inversion(pipe, args.ti_file)
    ti_prompts = [template.format(subject=f"{ti.token} {SUBJECT_CLASS}") for template in CONTEXTS.values()]
    rows.append((f"TI ({cost(args.output_dir / 'exercise3a_summary.json', [Path(args.ti_file)])})", ti_prompts,
                 generate(pipe, ti_prompts, seeds, desc="TI", **settings)))

    # Row 3: the LoRA with "sks" (the TI word is not in these prompts, so it stays silent).
    adapter = load_lora(pipe, lora)
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


if __name__ == "__main__":
    run_script(main)

"""Run exercise3b on the micro model under several settings and seeds, side by side, and tabulate the judge.

One training run is one draw: the LoRA's random start and the images each update
sees depend on --seed, and the judge's numbers move by a few hundredths between
seeds. A setting is better only if it wins across seeds, so each one runs once
per seed and the table gives the mean and the spread.

    python -m micro.sweep_lora                                  # every setting, seeds 0 1 2, one run at a time
    python -m micro.sweep_lora --device cuda --parallel 8       # on a GPU, eight runs at once
    python -m micro.sweep_lora --settings unet-attention-conv te-attention --seeds 0

The class images are drawn once into --class-dir before the runs start, so that
parallel runs never draw the same cache at the same time.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

# exercise3b flags of each setting, spelled out so that a change of defaults does not change them.
ATTENTION = ["to_q", "to_k", "to_v", "to_out.0"]
CONVOLUTIONS = ATTENTION + ["conv1", "conv2"]
# Every convolution and linear layer of the UNet: what a LoRA can reach short of full fine-tuning.
ALL_LAYERS = CONVOLUTIONS + ["conv_in", "conv_out", "conv_shortcut", "time_emb_proj", "proj_in", "proj_out",
                             "ff.net.0.proj", "ff.net.2", "linear_1", "linear_2"]
# ALL_LAYERS but the ResNets' 3x3 convolutions, the costliest to adapt at the outer levels
ALL_BUT_RESNET_CONVOLUTIONS = [target for target in ALL_LAYERS if target not in ("conv1", "conv2")]
AFRICAN_IN_FOUR_CONTEXTS = ["an african fabric pattern", "a dress made of african fabric pattern",
                            "a ceramic vase decorated with african fabric pattern",
                            "a cushion made of african fabric pattern"]


def flags(text_encoder, identifier_learning_rate=None, empty_prompts=0.0, targets=ATTENTION, extra=(),
          offset_noise=0.0):
    """exercise3b's flags for one setting: text-encoder LoRA on or off, the identifier's embeddings
    trained at this learning rate (None: not trained), the share of empty instance prompts, the offset
    noise."""
    identifier = (["--train-identifier", "--identifier-learning-rate", str(identifier_learning_rate)]
                  if identifier_learning_rate else ["--no-train-identifier"])
    # rank 4, alpha 32: exercise3b's micro default before 2026-12-04, which the older settings were measured at
    # (a later --rank or --lora-alpha in `extra` wins)
    return ["--train-text-encoder" if text_encoder else "--no-train-text-encoder", *identifier,
            "--rank", "4", "--lora-alpha", "32",
            "--proportion-empty-prompts", str(empty_prompts), "--offset-noise", str(offset_noise),
            "--lora-targets", *targets, *extra]


# unet-: the text encoder stays frozen; te-: its attention gets a LoRA too; identifier: the
# identifier's token embeddings train (at 1e-3 unless named); empty: that share of instance
# images trains with the empty prompt; conv: the ResNet convolutions are adapted as well; all-layers:
# every convolution and linear layer of the UNet.
SETTINGS = {
    "unet-attention": flags(False),
    "unet-attention-conv": flags(False, targets=CONVOLUTIONS),
    "te-attention": flags(True),
    "te-attention-conv": flags(True, targets=CONVOLUTIONS),
    "te-attention-class-african": flags(True, extra=["--class-prompt", "an african fabric pattern"]),
    "te-attention-four-contexts": flags(True, extra=["--class-prompt", *AFRICAN_IN_FOUR_CONTEXTS]),
    "te-attention-prior3": flags(True, extra=["--prior-loss-weight", "3"]),
    "te-attention-class-african-prior3": flags(
        True, extra=["--class-prompt", "an african fabric pattern", "--prior-loss-weight", "3"]),
    "te-attention-1600": flags(True, extra=["--max-train-steps", "1600"]),
    "te-attention-unconditional-prior": flags(True, extra=["--class-prompt", "a fabric pattern", ""]),
    "identifier-unet-attention": flags(False, 1e-3),
    "identifier-unet-attention-class-african": flags(
        False, 1e-3, extra=["--class-prompt", "an african fabric pattern"]),
    "identifier-te-attention": flags(True, 1e-3),
    "identifier-5e-3-te-attention": flags(True, 5e-3),
    "identifier-5e-3-te-attention-empty-0.05": flags(True, 5e-3, empty_prompts=0.05),
    "identifier-te-attention-empty-0.05": flags(True, 1e-3, empty_prompts=0.05),
    "te-attention-empty-0.05": flags(True, empty_prompts=0.05),
    "identifier-5e-3-te-attention-conv-empty-0.05": flags(True, 5e-3, empty_prompts=0.05, targets=CONVOLUTIONS),
    "identifier-5e-3-te-attention-empty-0.05-rank16": flags(
        True, 5e-3, empty_prompts=0.05, extra=["--rank", "16", "--lora-alpha", "128"]),
    "identifier-5e-3-te-attention-empty-0.05-1600": flags(
        True, 5e-3, empty_prompts=0.05, extra=["--max-train-steps", "1600"]),
    "unet-all-layers": flags(False, targets=ALL_LAYERS),
    "unet-all-layers-no-prior": flags(False, targets=ALL_LAYERS, extra=["--no-prior-preservation"]),
    "identifier-5e-3-all-layers-rank16": flags(False, 5e-3, targets=ALL_LAYERS,
                                               extra=["--rank", "16", "--lora-alpha", "128"]),
    "identifier-5e-3-all-layers-rank16-1600": flags(
        False, 5e-3, targets=ALL_LAYERS, extra=["--rank", "16", "--lora-alpha", "128", "--max-train-steps", "1600"]),
    "identifier-5e-3-all-but-resnet-convs-rank16": flags(False, 5e-3, targets=ALL_BUT_RESNET_CONVOLUTIONS,
                                                         extra=["--rank", "16", "--lora-alpha", "128"]),
    "identifier-5e-3-convs-rank16": flags(False, 5e-3, targets=CONVOLUTIONS,
                                          extra=["--rank", "16", "--lora-alpha", "128"]),
    "identifier-5e-3-all-layers-rank16-400": flags(
        False, 5e-3, targets=ALL_LAYERS, extra=["--rank", "16", "--lora-alpha", "128", "--max-train-steps", "400"]),
    "identifier-5e-3-all-layers-rank16-400-lr2e-4": flags(
        False, 5e-3, targets=ALL_LAYERS, extra=["--rank", "16", "--lora-alpha", "128", "--max-train-steps", "400",
                                                "--learning-rate", "2e-4"]),
    # offset: the training noise carries offset noise of 0.1, as the base's pretraining did
    "identifier-5e-3-te-attention-empty-0.05-offset": flags(True, 5e-3, empty_prompts=0.05, offset_noise=0.1),
    "identifier-5e-3-convs-rank16-offset": flags(False, 5e-3, targets=CONVOLUTIONS, offset_noise=0.1,
                                                 extra=["--rank", "16", "--lora-alpha", "128"]),
    "identifier-5e-3-convs-rank16-offset-600": flags(
        False, 5e-3, targets=CONVOLUTIONS, offset_noise=0.1,
        extra=["--rank", "16", "--lora-alpha", "128", "--max-train-steps", "600"]),
    "identifier-5e-3-te-convs-rank16-offset-600": flags(
        True, 5e-3, empty_prompts=0.05, targets=CONVOLUTIONS, offset_noise=0.1,
        extra=["--rank", "16", "--lora-alpha", "128", "--max-train-steps", "600"]),
    # the micro default (above, offset) with 5% empty prompts, which took v1's drift away
    "identifier-5e-3-convs-rank16-offset-empty-0.05": flags(False, 5e-3, empty_prompts=0.05, targets=CONVOLUTIONS,
                                                            offset_noise=0.1, extra=["--rank", "16", "--lora-alpha", "128"]),
}


def class_prompts_of(flags):
    """The --class-prompt values in a setting's flags (None: exercise3b's default)."""
    if "--class-prompt" not in flags:
        return None
    rest = flags[flags.index("--class-prompt") + 1:]
    ends = [i for i, flag in enumerate(rest) if flag.startswith("--")]
    return tuple(rest[:ends[0]] if ends else rest)


def run_one(name, flags, seed, args, scratch, judge=True):
    folder = scratch / f"{name.replace(' ', '_').replace(',', '').replace(chr(39), '')}-seed{seed}"
    command = [sys.executable, str(REPO / "exercise3b_train_lora.py"), "--base-model", "micro",
               "--device", args.device, "--threads", str(args.threads), "--mixed-precision", "no", "--seed", str(seed),
               "--output-dir", str(folder), "--adapter-dir", str(folder / "lora"), "--class-dir", str(args.class_dir),
               "--progress-every", "100000", "--checkpoint-every", "100000",
               "--max-train-steps", str(args.max_train_steps), *flags]
    environment = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    result = subprocess.run(command, capture_output=True, text=True, env=environment, cwd=REPO)
    if result.returncode == 0 and judge:
        # exercise3b trains; the judge's subject report is micro.evaluate's
        result = subprocess.run([sys.executable, "-m", "micro.evaluate", "--lora-dir", str(folder / "lora"),
                                 "--subject-only", "--output", str(folder / "judge.json")],
                                capture_output=True, text=True, env=environment, cwd=REPO)
    if result.returncode != 0:
        return name, seed, {"error": (result.stderr or result.stdout).strip().splitlines()[-1:]}
    summary = json.loads((folder / "exercise3b_summary.json").read_text())
    numbers = {}
    subject = json.loads((folder / "judge.json").read_text())["subject"] if judge else {}
    for variant, judged in subject.items():
        for key, value in judged.items():
            if isinstance(value, dict):  # similarity_by_context: one number per context
                numbers.update({f"{variant} similarity {context}": v for context, v in value.items()})
            elif key != "images":
                numbers[f"{variant} {key}"] = value
    numbers["seconds"] = summary["wall_seconds"]
    return name, seed, numbers


def tabulate(results):
    """{setting: {number: 'mean ± sd'}} over the seeds that ran."""
    table = {}
    for name in dict.fromkeys(name for name, _, _ in results):
        runs = [numbers for n, _, numbers in results if n == name and "error" not in numbers]
        if not runs:
            continue
        table[name] = {key: (f"{statistics.mean(r[key] for r in runs):.3f} ± {statistics.pstdev(r[key] for r in runs):.3f}"
                             if len(runs) > 1 else f"{runs[0][key]:.3f}") for key in runs[0]}
        table[name]["seeds"] = len(runs)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=list(SETTINGS), choices=list(SETTINGS), metavar="SETTING",
                        help="which of: " + ", ".join(SETTINGS))
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--max-train-steps", type=int, default=800, help="updates per run (exercise3b's default)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--parallel", type=int, default=1, help="runs at once")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per run")
    parser.add_argument("--class-dir", type=Path, default=REPO / "models" / "class_images")
    parser.add_argument("--output", type=Path, default=REPO / "outputs" / "lora_sweep.json")
    parser.add_argument("--keep-runs", type=Path, default=None,
                        help="write each run's folder (adapter, progress grid, judge report) here and keep it, "
                             "to look at by eye; by default they go to a temporary folder")
    args = parser.parse_args(argv)
    if args.keep_runs and args.keep_runs.exists() and any(args.keep_runs.iterdir()):
        parser.error(f"--keep-runs {args.keep_runs} is not empty; name a new folder, so that no run's adapter "
                     "is overwritten")

    jobs = [(name, SETTINGS[name], seed) for name in args.settings for seed in args.seeds]
    with tempfile.TemporaryDirectory(prefix="lora-sweep-") as scratch:
        scratch = args.keep_runs or Path(scratch)
        scratch.mkdir(parents=True, exist_ok=True)
        # Draw each class prompt's images once, before runs share the cache: a
        # one-update run per class prompt does exactly that.
        class_prompts = {class_prompts_of(flags) for _, flags, _ in jobs}
        for number, prompts in enumerate(sorted(class_prompts, key=str)):
            warm = ["--max-train-steps", "1"] + (["--class-prompt", *prompts] if prompts else [])
            _, _, numbers = run_one(f"class-images-{number}", warm, 0, args, scratch, judge=False)
            if "error" in numbers:
                raise SystemExit(f"drawing class images failed: {numbers['error']}")
        with ThreadPoolExecutor(args.parallel) as pool:
            results = []
            for name, seed, numbers in pool.map(lambda job: run_one(job[0], job[1], job[2], args, scratch), jobs):
                print(f"{name}, seed {seed}: {numbers}", flush=True)
                results.append((name, seed, numbers))
    report = {"device": args.device, "seeds": args.seeds, "table": tabulate(results),
              "runs": [{"setting": n, "seed": s, **numbers} for n, s, numbers in results]}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["table"], indent=2))


if __name__ == "__main__":
    main()

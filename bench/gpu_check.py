"""GPU check: every exercise script end to end on Stable Diffusion 1.5's architecture, in one table.

The course's main path is SD 1.5 at 512 px in fp16 on a CUDA GPU, and CI has
no GPU. This one command, on a CUDA machine with no network, builds a pipeline
of SD 1.5's exact architecture with random weights (weights change neither
speed nor how precision is handled), runs every exercise script on it as a
student would, with short settings, and prints one table: script, wall
seconds, speed (s/image or updates/s), peak GPU memory, and whether its
outputs are all there. Exercise 1 loads the release LoRA, whose banner must
say 128 layers at scale 8.0.

    python bench/gpu_check.py                     # CUDA, SD 1.5 layout, 512 px, fp16
    python bench/gpu_check.py --precision bf16    # the same in bf16
    python bench/gpu_check.py --tiny              # a dry run anywhere: the tests' tiny model, 32 px
                                                  # (bf16 on a CPU), to check this script itself
    python bench/gpu_check.py --compile           # also exercise3b --compile (its compiling is
                                                  # reported as the first update's time)
    python bench/gpu_check.py --only-lora --compile blocks model:reduce-overhead
        # exercise3b only, eager and with each compile variant (SCOPE[:MODE]), each against eager
    python bench/gpu_check.py --reference PATH/train_dreambooth_lora.py
        # also diffusers' reference trainer on the same model and settings, side by side
    python bench/gpu_check.py --measure           # also exercise3_compare --measure, scored by CLIP
                                                  # ViT-B/32 and DINO ViT-S/16 layouts (random weights)

Where the table goes: printed, and written as gpu_check.md / gpu_check.json in
--out. docs/performance.md keeps the latest table with its date and GPU.
"""

import argparse
import collections
import contextlib
import gc
import io
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

RELEASE = REPO.parent / "shared" / "release"


# --- the model ---------------------------------------------------------------------------------

def build_sd15_layout(folder, dtype):
    """A diffusers folder with SD 1.5's UNet (860M), VAE (84M) and CLIP ViT-L/14 text encoder (123M),
    random weights. The tokenizer is the micro model's (SD 1.5's vocabulary files are a download);
    token ids only index the embedding table, so speed and memory are unchanged."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizerFast

    from tests.helpers import sd15_unet

    torch.manual_seed(0)
    unet = sd15_unet()
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
                        block_out_channels=(128, 256, 512, 512), down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4)
    tokenizer = CLIPTokenizerFast.from_pretrained(REPO / "models" / "micro" / "tokenizer")
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=768,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id))
    scheduler = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              num_train_timesteps=1000, clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.to(dtype=dtype).save_pretrained(folder)
    sizes = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae",
                                                                                        "text_encoder")}
    return sizes


def build_scorers(folder, tiny):
    """CLIP and DINO folders for --measure, random weights: the tests' tiny ones, or the layouts of
    openai/clip-vit-base-patch32 (CLIPConfig's defaults) and facebook/dino-vits16 at 224 px."""
    import torch
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizerFast,
                              ViTConfig, ViTImageProcessor, ViTModel)

    if tiny:
        from tests.helpers import write_tiny_clip, write_tiny_dino

        return write_tiny_clip(folder / "clip"), write_tiny_dino(folder / "dino")
    torch.manual_seed(0)
    tokenizer = CLIPTokenizerFast.from_pretrained(REPO / "models" / "micro" / "tokenizer")
    CLIPModel(CLIPConfig(text_config={"eos_token_id": tokenizer.eos_token_id,
                                      "bos_token_id": tokenizer.bos_token_id})).save_pretrained(folder / "clip")
    CLIPProcessor(image_processor=CLIPImageProcessor(), tokenizer=tokenizer).save_pretrained(folder / "clip")
    dino = ViTConfig(hidden_size=384, num_hidden_layers=12, num_attention_heads=6, intermediate_size=1536,
                     image_size=224, patch_size=16)
    ViTModel(dino, add_pooling_layer=False).save_pretrained(folder / "dino")
    ViTImageProcessor(size={"height": 224, "width": 224}).save_pretrained(folder / "dino")
    return folder / "clip", folder / "dino"


def build_tiny(folder, scratch):
    """The tests' tiny pipeline, with a LoRA made for it (standing in for the release LoRA)."""
    from tests.helpers import build_tiny_pipeline, tiny_unet, write_peft_lora

    pipe = build_tiny_pipeline(folder)
    lora = write_peft_lora(scratch / "tiny_lora", tiny_unet())
    (scratch / "tiny_ti").mkdir()
    sizes = {name: sum(p.numel() for p in getattr(pipe, name).parameters()) for name in ("unet", "vae",
                                                                                        "text_encoder")}
    return sizes, lora


# --- running one script, measured --------------------------------------------------------------

class Tee(io.TextIOBase):
    """Print as usual and keep a copy, to read the script's banner afterwards."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text):
        self.copy.write(text)
        return self.stream.write(text)

    def flush(self):
        self.stream.flush()


@contextlib.contextmanager
def counting_images(module):
    """Count the images the script generates and the seconds spent generating them."""
    import common.generation

    original = common.generation.generate
    counter = {"images": 0, "seconds": 0.0}

    def timed(pipe, prompts, *args, **kwargs):
        started = time.perf_counter()
        images = original(pipe, prompts, *args, **kwargs)  # PIL images: the GPU has finished them
        counter["seconds"] += time.perf_counter() - started
        counter["images"] += len(images)
        return images

    patched = [(common.generation, "generate")] + ([(module, "generate")] if hasattr(module, "generate") else [])
    for owner, name in patched:
        setattr(owner, name, timed)
    try:
        yield counter
    finally:
        for owner, name in patched:
            setattr(owner, name, original)


@contextlib.contextmanager
def host_syncs(enabled):
    """Count where the script made Python wait for the GPU ({"file.py:line": times}), with torch's
    sync debug mode, which warns at every synchronizing CUDA call (blocking copies included)."""
    import torch

    counts = collections.Counter()
    if not enabled:
        yield counts
        return
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # every time, not once per line
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield counts
        finally:
            torch.cuda.set_sync_debug_mode("default")
            counts.update(f"{Path(w.filename).name}:{w.lineno}" for w in caught
                          if "synchroniz" in str(w.message))


@contextlib.contextmanager
def cold_compile(folder):
    """Compile as a student's first run does: nothing compiled in this process yet (earlier rows compiled
    the same blocks), and empty on-disk caches of inductor's graphs and Triton's kernels (a second run of
    the same command on the same machine reads them back and compiles far quicker)."""
    import os

    import torch

    torch._dynamo.reset()
    saved = {name: os.environ.get(name) for name in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    for name in saved:
        os.environ[name] = str(folder / name.lower())
    try:
        yield
    finally:
        torch._dynamo.reset()  # and frees what CUDA graphs hold, before the next row runs
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def sync_note(counts, updates):
    """The note for a trainer audited with host_syncs: how many waits, and the places waited at most.
    A place hit about once per update (or more) is in the training loop; the class images, progress
    grid and evaluation (30 denoising steps each) and the loss log (every 20 updates) add the rest."""
    sites = ", ".join(f"{site} x{count}" for site, count in counts.most_common(5))
    return f"host syncs: {sum(counts.values())} in all for {updates} updates{f'; most at {sites}' if sites else ''}; "


def run_script(name, module, argv, device, audit_syncs=False):
    """Run `module.main(argv)` in this process; returns a row of the table (and what it printed).
    `audit_syncs` (CUDA): also count where it waited for the GPU (row["syncs"])."""
    import torch

    from common.errors import UserError

    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    row = {"script": name, "ok": True, "error": ""}
    tee = Tee(sys.stdout)
    started = time.perf_counter()
    print(f"\n=== {name}: python {module.__name__}.py {' '.join(map(str, argv))}", flush=True)
    with counting_images(module) as images, host_syncs(audit_syncs and device == "cuda") as syncs, \
            contextlib.redirect_stdout(tee):
        try:
            module.main([str(a) for a in argv])
        except (Exception, SystemExit) as error:  # keep going: the table says what failed
            row["ok"] = False
            row["error"] = (f"error: {error}" if isinstance(error, UserError)
                            else traceback.format_exception_only(type(error), error)[-1].strip())
            traceback.print_exc()
    if device == "cuda":
        torch.cuda.synchronize()
        row["peak_gib"] = round(torch.cuda.max_memory_allocated() / 1024 ** 3, 2)
    row["wall_s"] = round(time.perf_counter() - started, 1)
    row["images"] = images["images"]
    if images["images"]:
        row["s_per_image"] = round(images["seconds"] / images["images"], 3)
    row["printed"] = tee.copy.getvalue()
    row["syncs"] = syncs
    return row


def check(row, condition, message):
    if row["ok"] and not condition:
        row["ok"], row["error"] = False, message


def trainer_speed(row, summary_path):
    if summary_path.is_file():
        summary = json.loads(summary_path.read_text())
        row["updates_per_s"] = summary.get("updates_per_second")
        row["first_update_s"] = summary.get("first_update_seconds")
        row["phases"] = summary.get("seconds_by_phase")


def run_reference(script, model, scratch, updates, precision, resolution, class_images):
    """diffusers' train_dreambooth_lora.py on the same model, images and settings (1 + 1 images per update,
    rank 4, prior preservation with our class images); its speed read from its progress bar."""
    instance = scratch / "reference_instances"
    classes = scratch / "reference_classes"
    instance.mkdir(exist_ok=True)
    for path in sorted((REPO / "training_images").glob("*.png")):  # images only: it opens every file it finds
        shutil.copy(path, instance / path.name)
    classes.mkdir(exist_ok=True)
    for index, path in enumerate(sorted(class_images.glob("*.png"))):
        shutil.copy(path, classes / f"{index}.png")
    command = [sys.executable, str(script), "--pretrained_model_name_or_path", str(model),
               "--instance_data_dir", str(instance), "--instance_prompt", "a sks african fabric pattern",
               "--with_prior_preservation", "--class_data_dir", str(classes), "--class_prompt", "a fabric pattern",
               "--num_class_images", str(len(list(classes.glob("*.png")))), "--resolution", str(resolution),
               "--train_batch_size", "1", "--mixed_precision", precision, "--max_train_steps", str(updates),
               "--learning_rate", "1e-4", "--rank", "4", "--seed", "0", "--checkpointing_steps", str(10 * updates),
               "--output_dir", str(scratch / "reference_out"), "--report_to", "tensorboard"]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    lines = result.stderr.strip().splitlines() or [f"exit code {result.returncode}"]
    failure = next((line for line in reversed(lines) if "Error" in line), lines[-1])  # not the progress bar's line
    row = {"script": "diffusers train_dreambooth_lora.py (reference)", "ok": result.returncode == 0,
           "wall_s": round(time.perf_counter() - started, 1), "images": 0,
           "error": "" if result.returncode == 0 else failure[:200]}
    rates = re.findall(r"(\d+(?:\.\d+)?)(it/s|s/it)", result.stderr)
    if rates:  # tqdm's last reading, a running average of the latest updates
        value, unit = float(rates[-1][0]), rates[-1][1]
        row["updates_per_s"] = round(value if unit == "it/s" else 1 / value, 3)
    row["printed"] = result.stderr[-2000:]
    return row


def rows_by_name(rows, name):
    return next((row for row in rows if row["script"] == name), {})


def compile_note(compiled, eager):
    """What compiling cost (the first update's extra seconds) and after how many updates it is paid back.
    Under CUDA graphs (reduce-overhead) the second update records them: that time counts in the later
    updates' speed (a little low over a short row), not in the cost."""
    if not (compiled.get("updates_per_s") and eager.get("updates_per_s") and compiled.get("first_update_s")):
        return ""
    cost = compiled["first_update_s"] - (eager.get("first_update_s") or 0)
    saved = 1 / eager["updates_per_s"] - 1 / compiled["updates_per_s"]
    paid = f"paid back after {cost / saved:.0f} updates" if saved > 0 else "never paid back (no faster)"
    return f"{compiled['updates_per_s'] / eager['updates_per_s']:.2f}x eager; compiling {cost:.0f} s, {paid}; "


# --- the table ---------------------------------------------------------------------------------

def table(rows):
    lines = ["| script | ok | wall s | speed | peak GPU memory | note |", "|---|---|---|---|---|---|"]
    for row in rows:
        if row.get("updates_per_s"):
            speed = f"{row['updates_per_s']:.2f} updates/s (first update {row.get('first_update_s', '-')} s)"
        elif row.get("s_per_image"):
            speed = f"{row['s_per_image']:.3f} s/image ({row['images']} images)"
        else:
            speed = "-"
        memory = f"{row['peak_gib']:.2f} GiB" if "peak_gib" in row else "-"
        lines.append(f"| {row['script']} | {'yes' if row['ok'] else 'NO'} | {row['wall_s']} | {speed} | {memory} "
                     f"| {row.get('note', '')}{row['error']} |")
    return "\n".join(lines)


class Report:
    """The table, written to gpu_check.md / .json after every row: a call that runs out of time keeps
    what was measured before it."""

    def __init__(self, folder, heading):
        self.folder, self.heading, self.rows = folder, heading, []
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, row):
        self.rows.append(row)
        self.write(f"{self.heading}; so far, {len(self.rows)} rows")

    def finish(self, seconds):
        heading = f"{self.heading}; total {seconds:.0f} s"
        print(f"\n{heading}\n\n{table(self.rows)}")
        self.write(heading)

    def write(self, heading):
        (self.folder / "gpu_check.md").write_text(f"{heading}\n\n{table(self.rows)}\n")
        (self.folder / "gpu_check.json").write_text(json.dumps(
            {"heading": heading, "rows": [{k: v for k, v in r.items() if k != "printed"} for r in self.rows]},
            indent=2))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--tiny", action="store_true",
                        help="the tests' tiny model at 32 px instead of SD 1.5's layout at 512 px (a dry run)")
    parser.add_argument("--precision", choices=["auto", "fp16", "bf16"], default="auto",
                        help="auto: fp16 on CUDA (the course's path), bf16 elsewhere")
    parser.add_argument("--resolution", type=int, default=None, help="default: 512 (SD 1.5 layout), 32 (--tiny)")
    parser.add_argument("--steps", type=int, default=None, help="denoising steps; default: 30, 4 with --tiny")
    parser.add_argument("--updates", type=int, default=100, help="optimizer updates of each training run")
    parser.add_argument("--frames", type=int, default=48, help="morph frames (the table projects 450)")
    parser.add_argument("--release", type=Path, default=RELEASE, help="folder holding the release fabric_lora")
    parser.add_argument("--reference", type=Path, default=None,
                        help="diffusers' examples/dreambooth/train_dreambooth_lora.py, to run beside exercise3b")
    parser.add_argument("--out", type=Path, default=REPO / "outputs" / "gpu_check",
                        help="where gpu_check.md and gpu_check.json go")
    parser.add_argument("--compile", nargs="*", default=None, metavar="SCOPE[:MODE]",
                        help="also run exercise3b with --compile SCOPE --compile-mode MODE, once per variant, e.g. "
                             "blocks model:reduce-overhead; --compile alone: model")
    parser.add_argument("--only-lora", action="store_true",
                        help="only the exercise3b rows (and --reference): a second call measuring compile variants")
    parser.add_argument("--measure", action="store_true",
                        help="also exercise3_compare --measure on the trained adapters, at --measure-steps")
    parser.add_argument("--measure-steps", type=int, default=10,
                        help="denoising steps of the --measure row (it draws 4 x 132 pictures)")
    parser.add_argument("--model-dir", type=Path, default=None,
                        help="where SD 1.5's layout is built, to be reused by the next call on the same machine "
                             "(default: the scratch folder)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (model, adapters, pictures)")
    args = parser.parse_args()
    if args.only_lora and args.measure:
        parser.error("--measure needs the textual inversion that --only-lora leaves out")
    compiled = [variant.partition(":")[::2] for variant in args.compile or ["model"]] if args.compile is not None else []
    for scope, mode in compiled:
        if scope not in ("model", "blocks") or mode not in ("", "default", "reduce-overhead",
                                                              "max-autotune-no-cudagraphs"):
            parser.error(f"--compile {scope}:{mode}: SCOPE is model or blocks, MODE one of torch.compile's")

    import torch

    import exercise1_generate
    import exercise2_explore
    import exercise3_compare
    import exercise3a_train_textual_inversion
    import exercise3b_train_lora
    import generate_dreambooth_morph

    device = "cuda" if torch.cuda.is_available() else "cpu"
    precision = args.precision if args.precision != "auto" else ("fp16" if device == "cuda" else "bf16")
    scratch = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    model = scratch / "model"
    started = time.perf_counter()
    if args.tiny:
        sizes, release_lora = build_tiny(model, scratch)
        resolution, expected_layers, steps = args.resolution or 32, 32, args.steps or 4
    else:
        model = args.model_dir or model
        if (model / "sizes.json").is_file():  # built by an earlier call
            sizes = json.loads((model / "sizes.json").read_text())
        else:
            sizes = build_sd15_layout(model, torch.float16)
            (model / "sizes.json").write_text(json.dumps(sizes))
        release_lora = args.release / "fabric_lora"
        resolution, expected_layers, steps = args.resolution or 512, 128, args.steps or 30
    build_seconds = time.perf_counter() - started
    gpu = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or platform.machine()
    print(f"{'tiny model' if args.tiny else 'SD 1.5 layout, random weights'}: "
          + ", ".join(f"{name} {count / 1e6:.1f}M" for name, count in sizes.items())
          + f"; built in {build_seconds:.0f} s; {device} ({gpu}), {precision}, {resolution} px")

    out = scratch / "outputs"
    common = ["--base-model", model, "--device", device, "--resolution", resolution, "--steps", steps]
    generation = [*common, "--precision", precision]
    training = [*common, "--mixed-precision", precision, "--max-train-steps", args.updates,
                "--progress-every", args.updates, "--checkpoint-every", args.updates]
    heading = (f"{time.strftime('%Y-%m-%d')}, {device} ({gpu}), torch {torch.__version__}, {precision}, "
               f"{resolution} px, {'tiny model' if args.tiny else 'SD 1.5 layout (random weights)'}, "
               f"{steps} denoising steps, {args.updates} updates per training run, "
               f"`python {' '.join(sys.argv)}`")
    report = Report(args.out, heading)
    rows = report.rows

    if not args.only_lora:
        row = run_script("exercise1_generate (release LoRA)", exercise1_generate,
                         [*generation, "--lora-dir", release_lora, "--output-dir", out / "ex1"], device)
        check(row, f"{expected_layers} layers, scale 8.0" in row["printed"],
              f"banner lacks '{expected_layers} layers, scale 8.0'")
        check(row, len(list((out / "ex1" / "exercise1_variations").glob("*.png"))) == 9, "missing variations")
        report.add(row)

        row = run_script("exercise2_explore (release LoRA)", exercise2_explore,
                         [*generation, "--lora-dir", release_lora, "--output-dir", out / "ex2"], device)
        check(row, len(list((out / "ex2").glob("exercise2_*.png"))) == 3, "missing pictures")
        report.add(row)

        row = run_script("generate_dreambooth_morph (release LoRA)", generate_dreambooth_morph,
                         [*generation, "--lora-dir", release_lora, "--frames", args.frames, "--keyframes", 3,
                          "--output-dir", out / "morph"], device)
        check(row, (out / "morph" / "dreambooth_morph.gif").is_file(), "no GIF")
        if row.get("s_per_image"):
            row["note"] = f"450 frames: about {450 * row['s_per_image']:.0f} s; "
        report.add(row)

        # The trainers write where exercise3_compare reads their summaries (train/); the second
        # exercise3b run, with gradient checkpointing, only measures what checkpointing costs, and
        # counts where the training loop waits for the GPU (the first run's speed is left unaudited).
        row = run_script("exercise3a_train_textual_inversion", exercise3a_train_textual_inversion,
                         [*training, "--adapter-dir", scratch / "ti", "--output-dir", out / "train"], device)
        check(row, (scratch / "ti" / "learned_embeds.safetensors").is_file(), "no embedding")
        check(row, (out / "train" / "training_progress_ti" / f"step_{args.updates:05d}.png").is_file(),
              "no progress grid")
        trainer_speed(row, out / "train" / "exercise3a_summary.json")
        report.add(row)

    def train_lora(name, extra, folder, written):
        """One exercise3b row: trained as a student would, its outputs checked, its speed read."""
        audit = "--gradient-checkpointing" in extra
        with cold_compile(folder.with_name(folder.name + "_caches")) if "--compile" in extra else \
                contextlib.nullcontext():
            row = run_script(name, exercise3b_train_lora,
                             [*training, *extra, "--num-class-images", 4, "--class-dir", scratch / "classes",
                              "--adapter-dir", folder, "--output-dir", written], device, audit_syncs=audit)
        check(row, (folder / "adapter_model.safetensors").is_file(), "no adapter")
        check(row, (folder / f"checkpoint-{args.updates}" / "training_state.json").is_file(), "no checkpoint")
        check(row, (written / "training_progress_lora" / f"step_{args.updates:05d}.png").is_file(),
              "no progress grid")
        trainer_speed(row, written / "exercise3b_summary.json")
        if audit and device == "cuda":
            row["note"] = sync_note(row["syncs"], args.updates)
        return row

    report.add(train_lora("exercise3b_train_lora", [], scratch / "lora", out / "train"))
    if not args.only_lora:
        report.add(train_lora("exercise3b_train_lora --gradient-checkpointing", ["--gradient-checkpointing"],
                              scratch / "lora_gc", out / "train_gc"))
        row = run_script("exercise3_compare (the trained TI and LoRA)", exercise3_compare,
                         [*generation, "--lora-dir", scratch / "lora", "--ti-file",
                          scratch / "ti" / "learned_embeds.safetensors", "--output-dir", out / "train"],
                         device)
        check(row, (out / "train" / "exercise3_ti_vs_lora.png").is_file(), "no figure")
        report.add(row)

        if args.measure:
            # The adapters trained above, laid out as --adapters-root expects (the checkpointed LoRA
            # stands in for the one without prior preservation: only time and memory are measured).
            root = scratch / "measured_adapters"
            for source, name in (("ti", "fabric_textual_inversion"), ("lora", "fabric_lora"),
                                 ("lora_gc", "fabric_lora_no_prior")):
                shutil.copytree(scratch / source, root / name, ignore=shutil.ignore_patterns("checkpoint-*"))
            clip, dino = build_scorers(scratch / "scorers", args.tiny)
            row = run_script(f"exercise3_compare --measure ({args.measure_steps} steps)", exercise3_compare,
                             [*generation, "--steps", args.measure_steps, "--measure", "--adapters-root", root,
                              "--clip-model", clip, "--dino-model", dino, "--output-dir", out / "measure"], device)
            check(row, (out / "measure" / "exercise3_measured.md").is_file(), "no table")
            check(row, "DINO" in row["printed"] and "CLIP-T" in row["printed"], "a scorer is missing from the table")
            report.add(row)

    if args.reference:
        class_folders = [p for p in (scratch / "classes").iterdir() if p.is_dir()]
        reference = run_reference(args.reference, model, scratch, args.updates, precision, resolution,
                                  class_folders[0])
        if reference.get("updates_per_s"):  # each exercise3b row's speed against it
            reference["note"] = "".join(
                f"{row['script'].replace('exercise3b_train_lora', 'exercise3b')} is "
                f"{row['updates_per_s'] / reference['updates_per_s']:.2f}x this; "
                for row in rows if row["script"].startswith("exercise3b") and row.get("updates_per_s"))
        report.add(reference)

    # The compile variants last: each compiles first, and a call that runs out of time
    # keeps every row written before it (the table is rewritten after each row).
    reference = rows_by_name(rows, "diffusers train_dreambooth_lora.py (reference)")
    for scope, mode in compiled:
        extra = ["--compile", scope] + (["--compile-mode", mode] if mode else [])
        row = train_lora(f"exercise3b_train_lora {' '.join(extra)}", extra, scratch / f"lora_{scope}_{mode}",
                         out / f"train_{scope}_{mode}")
        row["note"] = compile_note(row, rows_by_name(rows, "exercise3b_train_lora"))
        if reference.get("updates_per_s") and row.get("updates_per_s"):
            row["note"] += f"{row['updates_per_s'] / reference['updates_per_s']:.2f}x the reference; "
        report.add(row)

    report.finish(time.perf_counter() - started)
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    sys.exit(0 if all(row["ok"] for row in report.rows) else 1)


if __name__ == "__main__":
    main()

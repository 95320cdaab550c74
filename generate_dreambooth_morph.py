"""The morph: a seamless looping GIF through the learned fabric's latent space.

What this teaches
-----------------
Every image starts as a block of Gaussian noise (the latent). Five seeds give
five keyframe latents; walking smoothly from one to the next and back to the
first makes the denoised images flow into each other, all of them still
"sks african fabric pattern", because the prompt never changes.

The walk uses SLERP, not a straight line: high-dimensional Gaussian noise
lies near a sphere, and the midpoint of a straight line between two noise
samples is too short a vector; the model sees "too little noise" and draws
a washed-out, blurry frame. SLERP stays on the sphere (see common/slerp.py).

What to look at
---------------
outputs/dreambooth_morph.gif   450 frames that loop forever without a jump

GIF stores each frame's delay in whole hundredths of a second, so 30 fps
(3.33 cs) cannot be stored: the delay is rounded to 3 cs, which plays at
33.3 fps (450 frames in 13.5 s). Pass --fps 25 for an exact 4 cs (18 s).

Run it
------
    python generate_dreambooth_morph.py                              # 450 frames
    python generate_dreambooth_morph.py --frames 40 --keyframes 4    # a quick preview
"""

import os

import torch
from diffusers.utils.torch_utils import randn_tensor

from common import prompts
from common.cli import make_parser, positive_float, positive_int
from common.course_page import write_course_page
from common.errors import run_script
from common.generation import generate, seeded_generator
from common.grids import enlarged
from common.pipeline import load_personalized_pipeline, subject_token
from common.saving import GifFrames, save_gif
from common.slerp import slerp

# ---------------------------------------------------------------------------
# Configuration
# ---------------------------------------------------------------------------
PROMPT = prompts.MORPH_PROMPT  # "a {subject}, vibrant colors, high quality fabric swatch"
KEYFRAME_SEED_STEP = 1000  # keyframe k uses seed --seed + 1000 * k


def parse_args(argv=None):
    parser = make_parser(__doc__.split("\n")[0], batch_size=8, cuda_batch_size=16)
    parser.add_argument("--frames", type=positive_int, default=450, help="frames in the whole loop")
    parser.add_argument("--fps", type=positive_float, default=30.0,
                        help="frames per second asked for; GIF rounds the delay to whole 1/100 s")
    parser.add_argument("--keyframes", type=positive_int, default=5, help="distinct patterns the loop passes through")
    parser.add_argument("--prompt", default=PROMPT, help="prompt of every frame; {subject} becomes the learned phrase")
    args = parser.parse_args(argv)
    if args.keyframes < 2:
        parser.error("--keyframes must be at least 2 to morph between them")
    if args.frames < args.keyframes:
        parser.error(f"--frames ({args.frames}) must be at least --keyframes ({args.keyframes})")
    return args


def gif_delay(fps):
    """Whole centiseconds per frame; browsers slow delays under 2 cs down to 10 cs, so 2 is the floor."""
    return max(2, round(100 / fps))


def loop_latents(keyframes, frames):
    """`frames` latents walking keyframe 0 -> 1 -> ... -> last -> 0, evenly spaced, by SLERP.

    The walk stops one step short of the start, so the GIF's last frame leads
    into its first exactly as any frame leads into the next.
    """
    count = len(keyframes)
    positions = torch.arange(frames, dtype=torch.float64) * count / frames
    latents = torch.empty((frames, *keyframes[0].shape), dtype=keyframes[0].dtype)
    for segment in range(count):
        in_segment = (positions >= segment) & (positions < segment + 1)
        fractions = positions[in_segment] - segment
        if len(fractions):
            latents[in_segment] = slerp(keyframes[segment], keyframes[(segment + 1) % count], fractions)
    return latents


def main(argv=None):
    args = parse_args(argv)
    pipe, adapters = load_personalized_pipeline(args)
    prompt = args.prompt.format(subject=f"{subject_token(adapters, args.token)} {prompts.SUBJECT_CLASS}")

    # -----------------------------------------------------------------------
    # Step 1: the keyframe latents, one per seed, in the UNet's latent shape.
    # -----------------------------------------------------------------------
    side = args.resolution // pipe.vae_scale_factor
    shape = (pipe.unet.config.in_channels, side, side)
    keyframes = [randn_tensor(shape, generator=seeded_generator(args.seed + KEYFRAME_SEED_STEP * k),
                              dtype=torch.float32) for k in range(args.keyframes)]

    # -----------------------------------------------------------------------
    # Step 2: the loop of interpolated latents, then denoise them in batches.
    # The seeds are unused here: the latents are the starting noise.
    # -----------------------------------------------------------------------
    latents = loop_latents(keyframes, args.frames).to(pipe.unet.dtype)
    # Each frame becomes a GIF frame (256 colours of its own; the slow part of writing a GIF) in
    # worker threads. On a GPU that happens while the GPU draws the next batch; on a CPU only once
    # drawing is done, since threads competing with torch's for the cores can slow it badly
    # (docs/performance.md, Threads).
    # Small frames (micro's 64 px) are enlarged to 256 px, nearest-neighbour, so the GIF can be watched.
    on_gpu = pipe.device.type == "cuda"
    cores = os.cpu_count() or 1
    workers = max(1, cores - 1) if on_gpu else cores  # on a GPU one core is left to keep feeding it
    with GifFrames(prepare=enlarged, workers=workers) as gif_frames:
        frames = generate(pipe, [prompt] * args.frames, [0] * args.frames, latents=latents, steps=args.steps,
                          resolution=args.resolution, guidance=args.guidance, negative_prompt=args.negative_prompt,
                          batch_size=args.batch_size, desc="morph frames", on_batch=gif_frames.add if on_gpu else None)
        if not on_gpu:
            gif_frames.add(frames)

        # -------------------------------------------------------------------
        # Step 3: write the GIF, looping forever.
        # -------------------------------------------------------------------
        delay = gif_delay(args.fps)
        if abs(100 / delay - args.fps) > 1e-6:
            print(f"note: GIF stores delays in whole 1/100 s, so {args.fps:g} fps is written as {delay} cs per "
                  f"frame = {100 / delay:.1f} fps; the loop plays in {args.frames * delay / 100:.1f} s")
        path = save_gif(gif_frames.frames(), args.output_dir / "dreambooth_morph.gif", delay)
    print(f"wrote {path}: {args.frames} frames, {args.keyframes} keyframes, '{prompt}'")
    write_course_page(args.output_dir)  # outputs/index.html: the course's pictures so far, on one page


if __name__ == "__main__":
    run_script(main)

"""Benchmark: what writing the morph's GIF costs, made frame by frame at the end or in worker threads.

Most of a GIF's writing time goes to picking each frame's 256 colours. Given
RGB pictures, Pillow (and imageio, which calls it) does that for one frame
after another as it writes. `common/saving.GifFrames` makes the frames in
worker threads instead; the morph on a GPU hands them each batch as soon as
it is drawn, so that work hides behind the GPU's. This times both ways on
smooth synthetic frames (blurred noise, blended between five keyframes, as a
morph changes), in one run, and checks that the files are the same.

    python bench/bench_gif.py                      # 450 frames at 512 px (SD 1.5) and 64 px (micro)
    python bench/bench_gif.py --frames 90 --size 512
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def synthetic_frames(count, size):
    import numpy as np
    from PIL import Image, ImageFilter

    rng = np.random.default_rng(0)
    keyframes = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).filter(
        ImageFilter.GaussianBlur(size / 128)) for _ in range(5)]
    positions = [index * len(keyframes) / count for index in range(count)]
    return [Image.blend(keyframes[int(p)], keyframes[(int(p) + 1) % len(keyframes)], p % 1) for p in positions]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--frames", type=int, default=450)
    parser.add_argument("--size", type=int, nargs="+", default=[512, 64],
                        help="frame sides in pixels as drawn; under 256 px enlarged to 256, as the morph does")
    args = parser.parse_args()

    from common.grids import enlarged
    from common.saving import GifFrames, atomic_write, save_gif

    workers = os.cpu_count()  # as the morph after drawing on a CPU (on a GPU: one fewer, while it draws)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for size in args.size:
            frames = [enlarged(frame) for frame in synthetic_frames(args.frames, size)]
            started = time.perf_counter()
            serial = atomic_write(Path(folder) / "serial.gif", lambda temp: frames[0].save(
                temp, format="GIF", save_all=True, append_images=frames[1:], duration=30, loop=0))
            serial_seconds = time.perf_counter() - started
            started = time.perf_counter()
            with GifFrames(workers=workers) as gif_frames:
                gif_frames.add(frames)
                threaded = save_gif(gif_frames.frames(), Path(folder) / "threaded.gif", 3)
            threaded_seconds = time.perf_counter() - started
            if serial.read_bytes() != threaded.read_bytes():
                sys.exit("the two GIFs differ")
            rows.append((size, serial_seconds, threaded_seconds))
            print(rows[-1], flush=True)
    print(f"\n{args.frames} frames, {os.cpu_count()} CPUs ({workers} worker threads); the same bytes both ways\n")
    print("| frame side | Pillow given RGB frames, s | GifFrames in threads, s | ratio |")
    print("|---|---|---|---|")
    for size, serial_seconds, threaded_seconds in rows:
        side = f"{size} px" if size >= 256 else f"{size} px, enlarged to 256"
        print(f"| {side} | {serial_seconds:.1f} | {threaded_seconds:.1f} | {serial_seconds / threaded_seconds:.2f}x |")


if __name__ == "__main__":
    main()

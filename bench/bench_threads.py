"""Benchmark: how many CPU threads torch should use, with and without other work on the machine.

Draws the same micro-model images (Exercise 1's first contexts, 30 steps) in a
fresh process per setting, with torch's thread count at its default, at the
number of physical cores, at 1, and as --threads auto picks, once on an idle machine and once while
busy processes (one per core) compete for the cores, as on a laptop running
something else. Prints seconds per image for each, from this one run.

    python bench/bench_threads.py                 # 6 images a setting
    python bench/bench_threads.py --images 12
"""

import argparse
import json
import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def draw(images, threads):
    """In this process: set the threads (0 = torch's default, -1 = the repo's auto), draw, print s / image."""
    import torch

    sys.path.insert(0, str(REPO))
    if threads == -1:
        from common.device import cpu_threads

        threads = cpu_threads("auto")
    if threads:
        torch.set_num_threads(threads)
    from common.base_model import MICRO_FOLDER
    from common.generation import generate
    from common.pipeline import load_pipeline
    from common.prompts import CONTEXTS

    pipe = load_pipeline(str(MICRO_FOLDER), torch.device("cpu"), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    prompts = [template.format(subject="sks african fabric pattern") for template in CONTEXTS.values()]
    prompts = (prompts * images)[:images]
    generate(pipe, prompts[:1], [0], steps=30, resolution=64, guidance=7.5, desc="warm-up")
    started = time.perf_counter()
    generate(pipe, prompts, list(range(images)), steps=30, resolution=64, guidance=7.5, desc="timed")
    print(json.dumps({"threads": torch.get_num_threads(), "seconds_per_image": (time.perf_counter() - started) / images}))


def busy(stop_at):
    while time.time() < stop_at:
        pass


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--images", type=int, default=6, help="images timed per setting")
    parser.add_argument("--draw", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.draw is not None:
        return draw(args.images, args.draw)

    import psutil

    physical = psutil.cpu_count(logical=False) or os.cpu_count()
    settings = {"torch's default": 0, f"physical cores ({physical})": physical, "1": 1, "--threads auto": -1}
    rows = []
    for load in ("idle", f"{os.cpu_count()} busy processes"):
        workers = []
        if load != "idle":
            stop_at = time.time() + 3600
            workers = [multiprocessing.Process(target=busy, args=(stop_at,)) for _ in range(os.cpu_count())]
            for worker in workers:
                worker.start()
        try:
            for name, threads in settings.items():
                result = subprocess.run([sys.executable, __file__, "--draw", str(threads), "--images", str(args.images)],
                                        capture_output=True, text=True, check=True)
                measured = json.loads(result.stdout.strip().splitlines()[-1])
                rows.append((load, name, measured["threads"], measured["seconds_per_image"]))
        finally:
            for worker in workers:
                worker.terminate()
    print(f"micro model, 64 px, 30 steps, {args.images} images a setting, {os.cpu_count()} logical CPUs")
    print("| machine | torch threads | threads | s / image |")
    print("|---|---|---|---|")
    for load, name, threads, seconds in rows:
        print(f"| {load} | {name} | {threads} | {seconds:.2f} |")


if __name__ == "__main__":
    main()

"""Benchmark: each exercise at its default settings on the micro model, against the CPU budgets.

Runs every script as a student would (`python <script>` with only output
folders redirected to a scratch directory, so nothing in the repo is touched)
and prints wall time next to its budget, all from one run.

The paper's evaluation (`exercise3_compare.py --measure`) runs twice on an
empty adapters folder: first it trains all three adapters (TI, LoRA with and
without prior preservation, and their class images) and measures; then it
finds them and only measures.

    python bench/bench_micro_budgets.py            # all scripts, about 12 minutes on 2 cores
    python bench/bench_micro_budgets.py --only exercise1_generate.py
    python bench/bench_micro_budgets.py --only "measure, training all"  --only "measure, all trained"
"""

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
MEASURE = ["--measure", "--adapters-root", "{tmp}/measured_adapters"]
BUDGETS = [  # name, script, extra flags, budget in seconds
    ("exercise3b_train_lora.py", "exercise3b_train_lora.py",
     ["--adapter-dir", "{tmp}/lora", "--class-dir", "{tmp}/classes"], 300),
    ("exercise3a_train_textual_inversion.py", "exercise3a_train_textual_inversion.py", ["--adapter-dir", "{tmp}/ti"],
     300),
    ("exercise1_generate.py", "exercise1_generate.py", [], 60),
    ("exercise2_explore.py", "exercise2_explore.py", [], 120),
    ("generate_dreambooth_morph.py", "generate_dreambooth_morph.py", [], 300),
    ("measure, training all", "exercise3_compare.py", MEASURE, 900),  # issue 14's budgets
    ("measure, all trained", "exercise3_compare.py", MEASURE, 300),  # finds what the run above trained
]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--only", action="append", help="run only this script (repeatable)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, script, flags, budget in BUDGETS:
            if args.only and name not in args.only:
                continue
            command = [sys.executable, script, "--base-model", "micro", "--output-dir", f"{tmp}/outputs"]
            command += [flag.format(tmp=tmp) for flag in flags]
            started = time.perf_counter()
            result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
            seconds = time.perf_counter() - started
            if result.returncode != 0:
                print(result.stderr[-2000:])
            rows.append((name, seconds, budget, result.returncode))
            print(f"{name:42s} {seconds:7.1f} s   budget {budget:4d} s   "
                  f"{'ok' if seconds <= budget and result.returncode == 0 else 'OVER' if not result.returncode else 'FAILED'}",
                  flush=True)
    return 0 if all(code == 0 for *_, code in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

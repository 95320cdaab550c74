"""Benchmark: what the fixed-noise evaluation loss costs, against the training it watches.

Runs exercise3b at its defaults on the micro model, with and without prior
preservation, into a scratch folder, and prints from each run's own phase
clock the seconds spent evaluating against the seconds spent training (the
issue's budget: at most 10%), all from one run of this script. Class images
are drawn into the repo's usual cache (models/class_images) if missing.

    python bench/bench_evaluation_cost.py
"""

import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def main():
    rows = []
    with tempfile.TemporaryDirectory(prefix="evaluation-cost-") as scratch:
        for name, extra in (("defaults (prior preservation)", []), ("--no-prior-preservation", ["--no-prior-preservation"])):
            folder = Path(scratch) / str(len(rows))
            subprocess.run([sys.executable, str(REPO / "exercise3b_train_lora.py"), "--base-model", "micro",
                            "--adapter-dir", str(folder / "lora"), "--output-dir", str(folder), *extra],
                           check=True, cwd=REPO, capture_output=True, text=True)
            summary = json.loads((folder / "exercise3b_summary.json").read_text())
            phases, curve = summary["seconds_by_phase"], summary["evaluation_loss"]
            rows.append((name, phases["evaluation"], phases["training"], curve))
    print("| run | evaluations | evaluation s | training s | share | instance loss | class loss |")
    print("|---|---|---|---|---|---|---|")
    for name, evaluation, training, curve in rows:
        print(f"| {name} | {len(curve['update'])} | {evaluation:.1f} | {training:.1f} | {evaluation / training:.1%} "
              f"| {curve['instance'][0]:.3f} -> {curve['instance'][-1]:.3f} "
              f"| {curve['class'][0]:.3f} -> {curve['class'][-1]:.3f} |")


if __name__ == "__main__":
    main()

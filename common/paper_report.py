"""The DreamBooth paper's table and chart, from measured rows.

A report is a dict: `about` (one line: what was measured, how), `real_vs_real`
({measure: the instance images against each other}, the ceiling of subject
fidelity) and `methods` ({method: row}). A row holds whichever measures its
scorer gave (the micro judge's, CLIP's, DINO's); the table shows the columns
that some row has, so one report format serves micro and Stable Diffusion.
"""

# The paper's numbers (Ruiz et al. 2022, Tables 1 and 3; on Stable Diffusion for Table 1).
PAPER_ROWS = {
    "real images": {"dino": 0.774, "clip_i": 0.885},
    "DreamBooth (Stable Diffusion)": {"dino": 0.668, "clip_i": 0.803, "clip_t": 0.305},
    "Textual Inversion (Stable Diffusion)": {"dino": 0.569, "clip_i": 0.780, "clip_t": 0.255},
    "DreamBooth with prior preservation (Imagen)": {"pres": 0.493, "div": 0.391},
    "DreamBooth without prior preservation (Imagen)": {"pres": 0.664, "div": 0.371},
}

# (key in a row, column title); subject fidelity first, then prompt fidelity, then the prior's two.
COLUMNS = [
    ("subject_fidelity", "subject fidelity (judge)"),
    ("subject_pattern", "subject's rosettes (detector)"),
    ("subject_family", "subject's pattern (judge)"),
    ("dino", "DINO"),
    ("clip_i", "CLIP-I"),
    ("prompt_fidelity", "prompt fidelity (judge)"),
    ("clip_t", "CLIP-T"),
    ("pres", "PRES"),
    ("div", "DIV"),
]


def combine(runs):
    """One row from the runs of several training seeds: each number's mean, and its spread (standard
    deviation over the seeds) as `<name>_spread` where there is more than one run."""
    import statistics

    row = {}
    keys = {key: run[key] for run in reversed(runs) for key in run}  # every key any run has (the first's value)
    for key, value in keys.items():
        if isinstance(value, dict):
            row[key] = {kind: round(statistics.mean(run[key][kind] for run in runs), 3) for kind in value}
        elif isinstance(value, (int, float)):
            values = [run[key] for run in runs if key in run]
            row[key] = round(statistics.mean(values), 3)
            if len(values) > 1:
                row[f"{key}_spread"] = round(statistics.pstdev(values), 3)
    row["training_seeds"] = len(runs)
    return row


def measured_columns(report):
    """The columns some method's row has, in COLUMNS' order."""
    return [(key, title) for key, title in COLUMNS if any(key in row for row in report["methods"].values())]


def markdown(report):
    """The measured table beside the paper's, as markdown."""
    columns = measured_columns(report)
    titles = [title for _, title in columns] + ["colour with word / without", "training", "adapter"]
    lines = [report["about"], "", "| method | " + " | ".join(titles) + " |", "|---" * (len(titles) + 1) + "|"]
    bound = report["real_vs_real"]
    lines.append("| real images (the instance images against each other) | "
                 + " | ".join(str(bound.get(key, "")) for key, _ in columns) + " | | | |")
    for name, row in report["methods"].items():
        def cell(key):
            if key not in row:
                return "-"
            spread = f" ± {row[key + '_spread']:.3f}" if key + "_spread" in row else ""
            return f"{row[key]:.3f}{spread}"

        seconds = f"{row['training_seconds']:.0f} s" if row.get("training_seconds") else "-"
        size = f"{row['adapter_bytes'] / 1024:.1f} KB" if row.get("adapter_bytes") else "-"
        cells = [cell(key) for key, _ in columns]
        cells += [f"{cell('colour_similarity_with_word')} / {cell('colour_similarity_without_word')}", seconds, size]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "The paper's numbers (Ruiz et al. 2022, DreamBooth, Tables 1 and 3):", "",
              "| paper row | DINO | CLIP-I | CLIP-T | PRES | DIV |", "|---|---|---|---|---|---|"]
    for name, row in PAPER_ROWS.items():
        cells = [row.get(key, "") for key in ("dino", "clip_i", "clip_t", "pres", "div")]
        lines.append(f"| {name} | " + " | ".join(str(cell) for cell in cells) + " |")
    return "\n".join(lines) + "\n"


def chart(report, title):
    """Grouped bars, one group per measure, one colour per method; each real-vs-real bound as a line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, columns = list(report["methods"]), measured_columns(report)
    figure, axis = plt.subplots(figsize=(max(9, 1.6 * len(columns) + 3), 4.2), layout="constrained")
    width = 0.8 / len(methods)
    for offset, method in enumerate(methods):
        row = report["methods"][method]
        groups = [group for group, (key, _) in enumerate(columns) if key in row]
        axis.bar([group + (offset - (len(methods) - 1) / 2) * width for group in groups],
                 [row[columns[group][0]] for group in groups], width, label=method, color=f"C{offset}")
    bounds = [(group, report["real_vs_real"][key]) for group, (key, _) in enumerate(columns)
              if key in report["real_vs_real"]]
    for index, (group, bound) in enumerate(bounds):
        axis.hlines(bound, group - 0.45, group + 0.45, colors="black", linestyles="dashed",
                    label="real vs real" if index == 0 else None)
    axis.set_xticks(range(len(columns)), [title for _, title in columns])
    axis.set_ylim(0, 1.08)
    axis.set_title(title)
    axis.legend(fontsize=8, loc="upper right")
    return figure

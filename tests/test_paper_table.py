"""micro/paper_table.py, common/paper_report.py and exercise3_compare.py --measure: the prompt set, the judge's
reading, the table and chart, the outputs on micro and on a Stable Diffusion folder."""

import json

import pytest
import torch

from common import paper_report
from micro import paper_table, world
from tests.helpers import TINY, overlapping_texts, run_main, write_tiny_clip, write_tiny_dino


def test_the_prompt_set_covers_contexts_colours_and_styles_with_valid_labels():
    items = paper_table.prompt_set("sks african fabric pattern")
    kinds = [kind for kind, _, _ in items]
    assert kinds.count("context") == len(world.CONTEXTS) and kinds.count("colour") == 6
    assert kinds.count("style") == len(world.STYLES) - 1  # every style but "plain"
    assert all("sks african fabric pattern" in prompt for _, prompt, _ in items)
    names = {"context": world.CONTEXTS, "colour": world.COLOURS, "style": world.STYLES}
    assert all(0 <= label < len(names[kind]) for kind, _, label in items)


def test_prompt_hits_read_the_asked_label_and_a_colour_in_the_top_two():
    items = [("context", "a", 2), ("style", "b", 5), ("colour", "c", 3)]
    seeds = 2
    outputs = {"context": torch.zeros(6, len(world.CONTEXTS)), "style": torch.zeros(6, len(world.STYLES)),
               "colours": torch.zeros(6, len(world.COLOURS))}
    outputs["context"][0, 2] = outputs["context"][1, 0] = 1  # the first seed right, the second wrong
    outputs["style"][2, 5] = outputs["style"][3, 5] = 1  # both right
    outputs["colours"][4, 3], outputs["colours"][4, 1] = 0.5, 0.9  # asked colour second: counts
    outputs["colours"][5, 0], outputs["colours"][5, 1] = 0.9, 0.8  # not in the top two
    hits = paper_table.prompt_hits(outputs, items, seeds)
    assert hits == {"context": (2, 0.5), "style": (2, 1.0), "colour": (2, 0.5)}


def fake_report():
    row = {"subject_fidelity": 0.6, "prompt_fidelity": 0.7, "pres": 0.4, "div": 0.05,
           "colour_similarity_with_word": 0.4, "colour_similarity_without_word": 0.1}
    return {"about": "test", "real_vs_real": {"subject_fidelity": 0.99},
            "methods": {"base model": row, "textual inversion": {**row, "adapter_bytes": 300},
                        "LoRA, prior preservation": {**row, "training_seconds": 40.0, "adapter_bytes": 230000},
                        "LoRA, no prior preservation": row}}


def test_the_table_and_chart_show_every_method_beside_the_paper():
    text = paper_report.markdown(fake_report())
    assert text.count("\n| ") >= 10 and "| LoRA, prior preservation | 0.600 | 0.700 | 0.400 | 0.050 | 0.400 / 0.100 | 40 s | 224.6 KB |" in text
    assert "0.668" in text and "0.664" in text  # the paper's rows, quoted
    figure = paper_report.chart(fake_report(), "test")
    assert len(figure.axes[0].patches) == 4 * 4 and overlapping_texts(figure) == []


def test_the_table_and_chart_take_the_columns_the_rows_have():
    report = fake_report()
    for name, row in report["methods"].items():  # the judge's columns and CLIP's and DINO's, as on micro with CLIP
        report["methods"][name] = {**row, "clip_i": 0.8, "clip_t": 0.3, **({"dino": 0.5} if name != "base model" else {})}
    report["real_vs_real"].update({"clip_i": 0.9, "dino": 0.7})
    header = paper_report.markdown(report).split("\n")[2]
    assert header.startswith("| method | subject fidelity (judge) | DINO | CLIP-I | prompt fidelity (judge) | CLIP-T |")
    assert "| base model | 0.600 | - | 0.800 |" in paper_report.markdown(report)  # a measure a row lacks is "-"
    figure = paper_report.chart(report, "The DreamBooth paper's measures on stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert len(figure.axes[0].patches) == 4 * 7 - 1 and overlapping_texts(figure) == []
    assert len(figure.axes[0].collections) == 3  # real vs real on the judge's similarity, DINO and CLIP-I


def test_measure_writes_the_table_json_and_chart(tmp_path, monkeypatch, instance_dir):
    import exercise3_compare
    from common.base_model import REPO

    shipped = REPO / "models" / "micro_release"
    monkeypatch.setattr(exercise3_compare, "adapter_or_train", lambda trained, ship, *rest: (
        ship or shipped / "fabric_lora" / "adapter_model.safetensors", None))
    asked = []
    monkeypatch.setattr(paper_table, "measure", lambda pipe, judge, images, subject, **kw: asked.append(subject) or
                        dict(fake_report()["methods"]["base model"]))
    compared = []
    monkeypatch.setattr(paper_table, "real_bound",
                        lambda judge, images: compared.append(len(images)) or {"subject_fidelity": 0.99})
    assert run_main(exercise3_compare, ["--base-model", "micro", "--measure", "--output-dir", tmp_path,
                                        "--instance-dir", instance_dir]) == 0
    assert compared == [4]  # the four pictures of --instance-dir, not the repo's ten
    report = json.loads((tmp_path / "exercise3_measured.json").read_text())
    assert list(report["methods"]) == ["base model", "textual inversion", "LoRA, prior preservation",
                                       "LoRA, no prior preservation"]
    assert asked[0] == asked[2] == "sks african fabric pattern" and asked[1] == "<african-fabric> african fabric pattern"
    assert report["methods"]["textual inversion"]["adapter_bytes"] > 0 and report["real_vs_real"] == {"subject_fidelity": 0.99}
    assert (tmp_path / "exercise3_measured.md").is_file() and (tmp_path / "exercise3_measured.png").is_file()


def test_measure_on_stable_diffusion_without_clip_is_one_line(tiny_pipeline_dir, tmp_path, capsys):
    import exercise3_compare

    assert run_main(exercise3_compare, ["--base-model", tiny_pipeline_dir, "--measure", "--output-dir", tmp_path,
                                        "--clip-model", tmp_path / "no_clip"]) == 1
    assert "hf download" in capsys.readouterr().err and not (tmp_path / "exercise3_measured.md").exists()
    assert run_main(exercise3_compare, ["--base-model", tiny_pipeline_dir, "--measure", "--output-dir", tmp_path,
                                        "--clip-model", "none"]) == 1
    assert "needs a scorer" in capsys.readouterr().err


def test_measure_on_a_stable_diffusion_folder_scores_with_clip_and_dino(tiny_pipeline_dir, tiny_lora_dir, tmp_path,
                                                                       instance_dir):
    """The SD 1.5 path end to end on the tiny pipeline: the adapters under --adapters-root, tiny CLIP and DINO."""
    import shutil

    from safetensors.torch import save_file

    import exercise3_compare

    root = tmp_path / "adapters"
    (root / "fabric_textual_inversion").mkdir(parents=True)
    save_file({"<my-fabric>": torch.randn(32)}, str(root / "fabric_textual_inversion" / "learned_embeds.safetensors"))
    shutil.copytree(tiny_lora_dir, root / "fabric_lora")
    shutil.copytree(tiny_lora_dir, root / "fabric_lora_no_prior")
    out = tmp_path / "out"
    assert run_main(exercise3_compare, [
        "--base-model", tiny_pipeline_dir, "--measure", "--adapters-root", root, "--instance-dir", instance_dir,
        "--clip-model", write_tiny_clip(tmp_path / "clip"), "--dino-model", write_tiny_dino(tmp_path / "dino"),
        "--output-dir", out, *TINY]) == 0
    report = json.loads((out / "exercise3_measured.json").read_text())
    assert set(report["real_vs_real"]) == {"clip_i", "dino"}
    assert list(report["methods"]) == ["base model", "textual inversion", "LoRA, prior preservation",
                                       "LoRA, no prior preservation"]
    for row in report["methods"].values():
        assert {"clip_i", "clip_t", "dino", "pres", "div", "colour_similarity_with_word"} <= set(row)
        assert "subject_fidelity" not in row  # the judge knows only micro's world
        assert row["images"] == (23 + 1 + 9) * 4
    base, lora = report["methods"]["base model"], report["methods"]["LoRA, prior preservation"]
    assert base["clip_i"] != lora["clip_i"]  # the LoRA was loaded: other pictures
    assert report["methods"]["textual inversion"]["adapter_bytes"] > 0 and "CLIP (" in report["about"]
    table = (out / "exercise3_measured.md").read_text()
    assert "| method | DINO | CLIP-I | CLIP-T | PRES | DIV |" in table and "judge" not in table.split("\n")[2]
    assert (out / "exercise3_measured.png").is_file()


def test_combine_gives_each_numbers_mean_and_its_spread_over_training_seeds():
    runs = [{"pres": 0.2, "prompt_fidelity_by_kind": {"style": 0.5}, "adapter_bytes": 300},
            {"pres": 0.4, "prompt_fidelity_by_kind": {"style": 1.0}, "adapter_bytes": 300}]
    row = paper_report.combine(runs)
    assert row["pres"] == 0.3 and row["pres_spread"] == 0.1 and row["prompt_fidelity_by_kind"] == {"style": 0.75}
    assert row["training_seeds"] == 2 and row["adapter_bytes_spread"] == 0
    # a number only some runs have (training time, where a seed's adapter was trained here) is still reported
    timed = paper_report.combine([{"pres": 0.2}, {"pres": 0.2, "training_seconds": 30.0}])
    assert timed["training_seconds"] == 30.0 and "training_seconds_spread" not in timed
    single = paper_report.combine(runs[:1])
    assert single["pres"] == 0.2 and "pres_spread" not in single
    assert "0.300 ± 0.100" in paper_report.markdown({"about": "", "real_vs_real": {}, "methods": {"x": {
        **row, "subject_fidelity": 0.5, "prompt_fidelity": 0.5, "div": 0.1, "colour_similarity_with_word": 0.2,
        "colour_similarity_without_word": 0.1}}})


def test_a_failed_training_is_one_line(tmp_path, monkeypatch, capsys):
    import subprocess

    import exercise3_compare
    from common.errors import UserError

    monkeypatch.setattr(subprocess, "run", lambda *args, **kwargs: subprocess.CompletedProcess(args, 1))
    try:
        exercise3_compare.adapter_or_train(tmp_path / "missing.safetensors", None, "exercise3b_train_lora.py", [],
                                           tmp_path / "out")
    except UserError as error:
        assert "exercise3b_train_lora.py failed (exit code 1)" in str(error)
    else:
        raise AssertionError("a failed training must stop with a UserError")


def test_an_adapters_root_of_its_own_trains_all_three_there_and_never_falls_back_on_the_shipped(tmp_path,
                                                                                                monkeypatch,
                                                                                                instance_dir):
    import subprocess

    import exercise3_compare

    commands = []
    monkeypatch.setattr(subprocess, "run", lambda command, **kwargs: commands.append(command) or
                        subprocess.CompletedProcess(command, 0))
    args = exercise3_compare.parse_args(["--measure", "--adapters-root", str(tmp_path / "root"),
                                         "--instance-dir", str(instance_dir), "--output-dir", str(tmp_path / "out")])
    args.base_model = "micro"
    methods = exercise3_compare.method_adapters(args, training_seed=0)
    assert [command[1] for command in commands] == ["exercise3a_train_textual_inversion.py",
                                                    "exercise3b_train_lora.py", "exercise3b_train_lora.py"]
    ti, lora, no_prior = (" ".join(command) for command in commands)
    assert all(f"--base-model micro --seed 0 --instance-dir {instance_dir.resolve()}" in command
               for command in (ti, lora, no_prior))  # trained on the images they are compared with
    assert "--class-dir" not in ti and f"--class-dir {tmp_path / 'root' / 'class_images'}" in lora
    assert "--no-prior-preservation" in no_prior and "--no-prior-preservation" not in lora
    assert methods["textual inversion"][0] == tmp_path / "root" / "fabric_textual_inversion" / "learned_embeds.safetensors"
    assert methods["LoRA, no prior preservation"][0] == tmp_path / "root" / "fabric_lora_no_prior"


def test_measure_on_micro_reads_each_number_off_the_judge(load_tiny_pipe):
    """paper_table.measure with a stand-in judge whose answers are known: every picture is 'stars', the
    'swatch' context, the first style and red; its embedding is the picture's mean colour."""
    from micro.judge import JUDGE_FAMILIES

    def judge(batch):
        count = len(batch)
        outputs = {"family": torch.zeros(count, len(JUDGE_FAMILIES)), "context": torch.zeros(count, len(world.CONTEXTS)),
                   "style": torch.zeros(count, len(world.STYLES)), "colours": torch.zeros(count, len(world.COLOURS))}
        outputs["family"][:, JUDGE_FAMILIES.index("stars")] = 1
        outputs["context"][:, world.CONTEXTS.index("swatch")] = 1
        outputs["style"][:, 0] = 1
        outputs["colours"][:, world.COLOURS.index("red")], outputs["colours"][:, world.COLOURS.index("blue")] = 1, 0.5
        return batch.mean(dim=(2, 3)), outputs

    from PIL import Image

    instance = [Image.new("RGB", (64, 64), (240, 228, 200))] * 2
    row = paper_table.measure(load_tiny_pipe(), judge, instance, "sks african fabric pattern", seeds=range(2), steps=2,
                              guidance=7.5, name="test")
    items = paper_table.prompt_set("x")
    assert row["images"] == 2 * len(items) + 2 + 2 * 7
    assert row["subject_family"] == 1.0  # every picture read as the subject's stars
    assert row["prompt_fidelity_by_kind"]["context"] == pytest.approx(1 / 7, abs=1e-3)  # only the swatch prompts
    colours = [label for kind, _, label in items if kind == "colour"]
    read = (world.COLOURS.index("red"), world.COLOURS.index("blue"))  # the judge's top two
    assert row["prompt_fidelity_by_kind"]["colour"] == pytest.approx(sum(c in read for c in colours) / len(colours),
                                                                     abs=1e-3)
    assert 0 <= row["div"] <= 1 and -1 <= row["subject_fidelity"] <= 1 and -1 <= row["pres"] <= 1

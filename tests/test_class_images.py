"""common/class_images.py: the prior's images, drawn once, cached per model, prompt and resolution."""

import os
from pathlib import Path

import torch
from PIL import Image


def test_damaged_class_images_are_drawn_again(tiny_pipeline_dir, tmp_path):
    from common.class_images import ensure_class_images
    from common.pipeline import load_pipeline

    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    folder = tmp_path / "classes"
    first = ensure_class_images(pipe, folder, "a fabric pattern", 3, 32, steps=2, guidance=7.5)
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    Image.new("RGB", (16, 16)).save(folder / "class_0000.png")  # wrong size
    (folder / "class_0001.png").write_bytes(b"garbage")  # corrupt
    again = ensure_class_images(pipe, folder, "a fabric pattern", 3, 32, steps=2, guidance=7.5)
    assert [image.tobytes() for image in again] == [image.tobytes() for image in first]
    assert (folder / "class_0002.png").stat().st_mtime_ns == stamps["class_0002.png"]  # untouched


def test_class_image_cache_follows_the_base_models_weights_and_the_sampling(tiny_pipeline_dir, tmp_path):
    from common.class_images import class_image_folder

    def folder(base=str(tiny_pipeline_dir), prompt="a fabric pattern", resolution=32, steps=15, guidance=7.5):
        return class_image_folder(tmp_path, base, prompt, resolution, steps=steps, guidance=guidance)

    before = folder()
    assert before.parent == tmp_path and before.name.startswith("a_fabric_pattern_32px_")
    assert folder() == before
    # another prompt, resolution, number of steps or guidance of the same model is another cache
    assert folder(prompt="a dress") != before
    assert folder(resolution=64) != before
    assert folder(steps=30) != before
    assert folder(guidance=3.0) != before
    weights = next(Path(tiny_pipeline_dir).glob("unet/*.safetensors"))
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10 ** 9))  # as a retrained model is rewritten
    assert folder() != before
    # a hub id has no local files: its name alone keys the cache
    assert folder(base="org/model") != folder(base="org/other")


def test_class_images_are_shared_evenly_by_the_class_prompts(tiny_pipeline_dir, tmp_path):
    from common.class_images import class_image_folder, class_images_for_prompts, shares
    from common.pipeline import load_pipeline

    assert shares(100, 3) == [34, 33, 33] and shares(4, 4) == [1, 1, 1, 1]
    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    images, captions = class_images_for_prompts(
        pipe, lambda prompt: class_image_folder(tmp_path, str(tiny_pipeline_dir), prompt, 32, steps=2, guidance=7.5),
        ["a fabric pattern", "a dress"], 3, 32, steps=2, guidance=7.5)
    assert len(images) == 3 and captions == ["a fabric pattern", "a fabric pattern", "a dress"]
    assert len(list(tmp_path.glob("a_dress_32px_*/class_*.png"))) == 1

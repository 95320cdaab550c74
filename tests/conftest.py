import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import REPO, build_tiny_pipeline, write_peft_lora  # noqa: E402

RELEASE = REPO.parent / "shared" / "release"

# --threads auto looks at how busy the CPU is as each script starts, so two runs that a test compares
# bit for bit could compute with different thread counts (and sum in another order) while other work
# runs beside the tests. One count for the whole session, as a user's OMP_NUM_THREADS would fix it.
os.environ.setdefault("OMP_NUM_THREADS", str(os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_pipeline_dir(tmp_path_factory):
    """A tiny random SD-format pipeline saved as a diffusers folder."""
    folder = tmp_path_factory.mktemp("tiny_sd")
    build_tiny_pipeline(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_lora_dir(tiny_pipeline_dir, tmp_path_factory):
    """A PEFT LoRA folder for the tiny pipeline, r=4, alpha=32 (scale 8) like the release."""
    from tests.helpers import tiny_unet

    return write_peft_lora(tmp_path_factory.mktemp("tiny_lora"), tiny_unet())


@pytest.fixture
def load_tiny_pipe(tiny_pipeline_dir):
    """A fresh pipeline from the tiny folder (fresh, so adapters never leak between tests)."""
    import torch

    from common.pipeline import load_pipeline

    return lambda: load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)


@pytest.fixture(scope="session")
def release_dir():
    if not (RELEASE / "fabric_lora" / "adapter_model.safetensors").is_file():
        pytest.skip(f"release weights not found at {RELEASE}")
    return RELEASE


@pytest.fixture(scope="session")
def instance_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("instances")
    for index in range(4):
        pixels = (np.random.RandomState(index).rand(40, 40, 3) * 255).astype("uint8")
        Image.fromarray(pixels).save(folder / f"fabric_{index}.png")
    return folder

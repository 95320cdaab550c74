"""common/saving.py: GIF frames made in threads write the GIF Pillow writes from the pictures themselves."""

import torch

from common.generation import generate
from common.grids import enlarged
from common.pipeline import load_pipeline
from common.saving import GifFrames, atomic_write, save_gif


def test_gif_frames_made_in_threads_as_batches_come_write_the_same_gif(tiny_pipeline_dir, tmp_path):
    """As the morph on a GPU: each batch's frames are made into GIF frames by worker threads while the next
    batch is drawn. The file is, byte for byte, the one Pillow writes when given all the RGB frames at the
    end (which is what imageio, used before, did), frames in order."""
    pipe = load_pipeline(str(tiny_pipeline_dir), torch.device("cpu"), torch.float32)
    pipe.set_progress_bar_config(disable=True)
    with GifFrames(prepare=enlarged, workers=3) as gif_frames:
        images = generate(pipe, ["a fabric pattern"] * 5, list(range(5)), steps=2, resolution=32, guidance=7.5,
                          batch_size=2, on_batch=gif_frames.add)
        threaded = save_gif(gif_frames.frames(), tmp_path / "threaded.gif", 3)
    rgb = [enlarged(image) for image in images]
    assert len({image.tobytes() for image in rgb}) == 5  # five different frames: their order shows
    at_the_end = atomic_write(tmp_path / "pillow.gif", lambda temp: rgb[0].save(
        temp, format="GIF", save_all=True, append_images=rgb[1:], duration=30, loop=0))
    assert threaded.read_bytes() == at_the_end.read_bytes()

"""Writing outputs atomically (a file is either the old one or the complete new one), and reading weights.

Every picture, GIF and weight file is first written under a temporary name in
the same folder and then renamed, which the operating system does in one step.
A crash or Ctrl-C therefore never leaves a truncated PNG or safetensors file.
Weights are read and written as safetensors only, never pickle.
"""

import json
import os
import tempfile
from pathlib import Path

from PIL import Image

from common.errors import UserError


def atomic_write(path, write):
    """Call write(temp_path) and move the result to `path` in one step."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix)
    os.close(handle)
    try:
        write(temp_name)
        # mkstemp makes owner-only files; give the result the usual permissions (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)
        os.replace(temp_name, path)
    finally:
        if os.path.exists(temp_name):
            os.remove(temp_name)
    return path


def check_writable(folder, flag):
    """Stop with one line, before any model is loaded, if `folder` cannot be created or written to; a
    run that fails there only after minutes of work, at its first write, loses that work. Folders
    made for the test are removed again, so that a run refused later leaves nothing behind."""
    folder = Path(folder)
    missing = [path for path in (folder, *folder.parents) if not path.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-test.")
        os.close(handle)
        os.remove(probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise UserError(f"{flag} {folder} cannot be written ({reason}); pass {flag} with a folder you can "
                        "write to") from None
    finally:
        for path in missing:  # deepest first
            if path.is_dir():
                path.rmdir()
    return folder


def save_image(image, path):
    return atomic_write(path, lambda temp: image.save(temp, format="PNG"))


def save_figure(figure, path, dpi=100):
    import matplotlib.pyplot as plt

    atomic_write(path, lambda temp: figure.savefig(temp, format="png", dpi=dpi, bbox_inches="tight"))
    plt.close(figure)
    return Path(path)


def gif_frame(image):
    """`image` as a GIF frame: 256 colours of its own (Pillow's adaptive palette, what it picks when given
    an RGB frame). Picking them is most of the time a GIF takes to write; Pillow lets other threads run
    meanwhile, so frames can be made in threads (GifFrames)."""
    return image.convert("RGB").convert("P", palette=Image.Palette.ADAPTIVE)


class GifFrames:
    """GIF frames made in worker threads while the caller goes on (the morph: while the GPU draws the
    next batch). `add(images)` as they come; `frames()` waits for all, in the order added.
    `prepare(image)` runs first in the worker (the morph enlarges micro's small frames); `workers`
    threads, one per CPU core unless told."""

    def __init__(self, prepare=None, workers=None):
        from concurrent.futures import ThreadPoolExecutor

        self.prepare = prepare or (lambda image: image)
        self.pool = ThreadPoolExecutor(max_workers=workers or os.cpu_count() or 1)
        self.pending = []

    def add(self, images):
        self.pending.extend(self.pool.submit(lambda image: gif_frame(self.prepare(image)), image) for image in images)

    def frames(self):
        return [future.result() for future in self.pending]

    def __enter__(self):
        return self

    def __exit__(self, *error):
        self.pool.shutdown(cancel_futures=True)


def save_gif(frames, path, centiseconds_per_frame):
    """An endlessly looping GIF of PIL images (made by gif_frame, or any others); GIF stores delays in
    whole 1/100 s. Written with Pillow, as imageio would, but from frames already made: imageio takes
    RGB arrays and picks every frame's colours one after another as it writes."""
    frames = [frame if frame.mode == "P" else gif_frame(frame) for frame in frames]
    return atomic_write(path, lambda temp: frames[0].save(temp, format="GIF", save_all=True, append_images=frames[1:],
                                                         duration=centiseconds_per_frame * 10, loop=0))


def save_text(text, path):
    def write(temp):
        with open(temp, "w") as handle:
            handle.write(text)
    return atomic_write(path, write)


def save_json(data, path):
    def write(temp):
        with open(temp, "w") as handle:
            json.dump(data, handle, indent=2)
            handle.write("\n")
    return atomic_write(path, write)


def save_safetensors(tensors, path, metadata=None):
    from safetensors.torch import save_file

    tensors = {key: value.detach().contiguous().cpu() for key, value in tensors.items()}
    return atomic_write(path, lambda temp: save_file(tensors, temp, metadata=metadata))


def read_safetensors(path):
    """All tensors of a .safetensors file; a damaged file is a UserError, and pickle is never used."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        state_dict = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as error:
        raise UserError(f"{path} is damaged or incomplete ({str(error).splitlines()[0][:100]}); "
                        "download or train it again") from None
    if not state_dict:
        raise UserError(f"{path} holds no tensors; download or train it again")
    return state_dict

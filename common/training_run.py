"""The bookkeeping both trainers share, kept out of their training loops.

A trainer's loop shows the lesson: draw a batch, add noise, predict, compare,
step. Everything around it lives here, once for both trainers: the loss log
(read from the device in batches), the time of each phase, the progress
grids drawn every few updates, checkpoints for an exact resume, Ctrl-C, the
loss curves and the summary.
"""

import contextlib
import math
import signal
import sys
import threading
import time

import torch

from common.checkpoints import load_checkpoint, prune_checkpoints, save_checkpoint
from common.errors import UserError


def smooth(values, weight=0.95):
    """Exponential moving average with bias correction (TensorBoard's smoothing).

    A single update's diffusion loss depends mostly on the random timestep, so
    raw curves look like noise; the average shows the trend.
    """
    smoothed, average = [], 0.0
    for count, value in enumerate(values, start=1):
        average = weight * average + (1 - weight) * value
        smoothed.append(average / (1 - weight ** count))
    return smoothed


class LossLog:
    """The losses of every update, read from the device in batches.

    Reading a GPU number on the CPU (`loss.item()`, `if not torch.isfinite(loss)`)
    makes Python wait until the GPU has finished all queued work, so the GPU
    idles while Python prepares the next update. The losses therefore stay on
    the device and are read `every` updates, and always before anything is
    saved, so a non-finite loss still stops the run before a checkpoint or
    adapter holds its weights. The smoothed loss for the progress bar is kept
    as a running average instead of being recomputed over the whole history.
    """

    def __init__(self, history, adapter_dir, every=20, weight=0.95):
        self.history, self.adapter_dir, self.every, self.weight = history, adapter_dir, every, weight
        self.pending = []
        self.average, self.count = 0.0, 0
        for value in history["total"]:
            self._average_in(value)

    def _average_in(self, value):
        self.count += 1
        self.average = self.weight * self.average + (1 - self.weight) * value

    @property
    def smoothed(self):
        """The bias-corrected moving average of the total loss (what `smooth` gives last)."""
        return self.average / (1 - self.weight ** self.count) if self.count else float("nan")

    @property
    def updates(self):
        return len(self.history["total"]) + len(self.pending)

    def add(self, **losses):
        """Record one update's losses (tensors; None for a loss this run does not have)."""
        self.pending.append({name: value.detach() for name, value in losses.items() if value is not None})
        return len(self.pending) >= self.every

    def flush(self):
        """Read the pending losses (one wait for the device), check them, append them to the history."""
        if not self.pending:
            return
        names = list(self.pending[0])
        rows = torch.stack([torch.stack([losses[name].float() for name in names])
                            for losses in self.pending]).cpu().tolist()
        first = len(self.history["total"]) + 1
        self.pending = []
        for offset, row in enumerate(rows):
            if not all(math.isfinite(value) for value in row):
                raise non_finite_loss_error(row[names.index("total")], first + offset, self.adapter_dir)
            for name, value in zip(names, row):
                self.history[name].append(value)
            self._average_in(row[names.index("total")])


class PhaseClock:
    """Wall seconds spent in each phase of a run (class images, training, progress grids, ...).

    A phase opened inside another (a progress grid inside the training loop) is
    counted once, in its own name: the outer phase's time excludes it.
    """

    def __init__(self):
        self.seconds = {}
        self._inner = []  # per open phase: (name, when it began, seconds spent in phases nested inside it)

    def begin(self, name):
        self.seconds.setdefault(name, 0.0)  # listed in the order the phases begin
        self._inner.append((name, time.perf_counter(), 0.0))

    def end(self):
        name, started, inner = self._inner.pop()
        spent = time.perf_counter() - started
        self.seconds[name] += spent - inner
        if self._inner:
            outer, outer_started, outer_inner = self._inner[-1]
            self._inner[-1] = (outer, outer_started, outer_inner + spent)

    @contextlib.contextmanager
    def phase(self, name):
        self.begin(name)
        try:
            yield
        finally:
            self.end()

    def summary(self, updates, first_update_seconds):
        """The JSON fields: seconds by phase, and the training speed after the first update
        (which also pays for warm-up: CUDA kernels chosen, memory reserved, compilation)."""
        training = self.seconds.get("training", 0.0)
        fields = {"seconds_by_phase": {name: round(value, 2) for name, value in self.seconds.items()},
                  "first_update_seconds": round(first_update_seconds, 3)}
        if updates > 1 and training > first_update_seconds:
            fields["updates_per_second"] = round((updates - 1) / (training - first_update_seconds), 3)
        return fields

    def describe(self, updates, first_update_seconds):
        """The closing line: '800 updates (5.2 updates/s after the first); class images 12 s, training 154 s,
        ...; total 180 s'."""
        speed = self.summary(updates, first_update_seconds).get("updates_per_second")
        def seconds(value):
            return f"{value:.1f} s" if value < 10 else f"{value:.0f} s"

        parts = [f"{name} {seconds(value)}" for name, value in self.seconds.items()]
        return (f"{updates} updates{f' ({speed:.3g} updates/s after the first)' if speed else ''}; "
                f"{', '.join(parts)}; total {seconds(sum(self.seconds.values()))}")


@contextlib.contextmanager
def sampling(accelerator, trained_models):
    """Draw pictures mid-training with exactly the weights being trained.

    Under mixed precision `accelerator.prepare` makes the prepared model return
    fp32, and the pipeline shares that model, so fp32 latents would reach the
    fp16/bf16 VAE ("Input type (float) and bias type (c10::Half) should be the
    same"). Sampling under the same autocast as training lets every layer take
    its input in the format it computes in.
    """
    for model in trained_models:
        model.eval()
    try:
        with torch.no_grad(), accelerator.autocast():
            yield
    finally:
        for model in trained_models:
            model.train()


EVALUATION_LABELS = {"instance": "instance images, instance prompt", "class": "class images, class prompt"}


def plot_loss_curves(history, path, title, evaluation=None):
    """One panel per loss in `history` ({name: [value per update]}): raw faint, smoothed bold; then,
    with `evaluation` ({"update": [...], role: [...]}), a panel of the fixed-noise evaluation losses."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from common.saving import save_figure

    curves = {name: values for name, values in history.items() if values}
    panels = len(curves) + bool(evaluation and evaluation["update"])
    figure, axes = plt.subplots(1, panels, figsize=(5 * panels, 3.6), squeeze=False)
    if panels > len(curves):
        axis = axes[0][-1]
        for role, label in EVALUATION_LABELS.items():
            values = evaluation.get(role)
            if values:
                change = f"{values[0]:.3f} -> {values[-1]:.3f} ({values[-1] / values[0] - 1:+.0%})"
                axis.plot(evaluation["update"], values, marker="o", linewidth=2.0, label=f"{label}: {change}")
        axis.set_title("evaluation loss: the same noise every time")
        axis.set_xlabel("optimizer update")
        axis.set_ylim(bottom=0)
        axis.legend(fontsize=8, loc="lower left")
    for axis, (name, values) in zip(axes[0], curves.items()):
        updates = range(1, len(values) + 1)
        axis.plot(updates, values, alpha=0.25, linewidth=0.8, label="raw")
        axis.plot(updates, smooth(values), linewidth=2.0, label="smoothed")
        axis.set_title(f"{name} loss")
        axis.set_xlabel("optimizer update")
        axis.set_yscale("log")
        axis.legend()
    figure.suptitle(title)
    figure.tight_layout()
    return save_figure(figure, path)


def non_finite_loss_error(loss, update, adapter_dir):
    """The one-line error for a NaN or infinite loss (`loss`: a number)."""
    return UserError(f"the loss became {float(loss)} at update {update}; nothing was saved from it "
                     f"(checkpoints in {adapter_dir} are intact): lower --learning-rate or "
                     "use --mixed-precision no, then --resume latest")


class TrainingRun:
    """One trainer's run, around its loop::

        run = TrainingRun(...)               # continues from a checkpoint when --resume names one
        with run:                            # times the training; Ctrl-C saves a checkpoint
            for update in run.updates():     # the updates still to do, with a progress bar
                ...                          # the lesson: forward, backward, optimizer step
                run.record(total=loss)       # the losses; a checkpoint or progress grid when due
        summary = run.summary()

    `trainable` ({name: parameter}) is what checkpoints hold; `progress_prompts` are
    drawn with `pipe` every --progress-every updates into <output-dir>/<progress_folder>/,
    with `trained_models` in eval mode and under the training's autocast.
    """

    def __init__(self, *, args, accelerator, settings, trainable, optimizer, lr_scheduler, generator, loss_names,
                 checkpoint, clock, pipe, trained_models, progress_prompts, progress_seeds, progress_folder,
                 description, evaluation=None):
        self.args, self.accelerator, self.settings = args, accelerator, settings
        self.trainable, self.optimizer, self.lr_scheduler, self.generator = trainable, optimizer, lr_scheduler, generator
        self.clock, self.pipe, self.trained_models = clock, pipe, trained_models
        self.progress_prompts, self.progress_seeds = progress_prompts, progress_seeds
        self.progress_folder, self.description = progress_folder, description
        self.history = {name: [] for name in loss_names}
        self.first_update, self.seconds_before = 0, 0.0
        # `evaluation(unet)` -> {role: loss} on a fixed set (common/evaluation_loss.py), at update 0 and with
        # every progress grid; its curve is kept in `self.evaluations` and in checkpoints.
        self.evaluation = evaluation
        self.evaluations = {"update": []}
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, trainable, optimizer, lr_scheduler, generator,
                                    accelerator.process_index)
            self.first_update, self.history, self.seconds_before = state["update"], state["history"], state["seconds"]
            self.evaluations = state.get("evaluation", self.evaluations)
            if accelerator.scaler is not None and state.get("grad_scaler"):
                # fp16's loss scale as it was: restarting from the initial scale would skip the updates
                # whose gradients overflow on the way back down, which the uninterrupted run did not.
                accelerator.scaler.load_state_dict(state["grad_scaler"])
            print(f"resuming from {checkpoint} at update {self.first_update}")
        self.losses = LossLog(self.history, args.adapter_dir)
        self.first_update_seconds = 0.0
        self.started = self.ended = None
        self.bar = None
        self.stop_requested, self.stopped_after_update, self.sigint_handler = False, False, None
        self.last_checkpoint = None  # the update the latest checkpoint holds
        # CUDA graphs (--compile-mode reduce-overhead) replay into the same memory every time: each update
        # is told apart, so the next one may overwrite the outputs of this one, which are used up by then.
        self.cuda_graphs = getattr(args, "compile", "off") != "off" and getattr(args, "compile_mode", None) == \
            "reduce-overhead"

    # --- the loop --------------------------------------------------------------------------------

    def __enter__(self):
        if self.first_update == 0:
            self.evaluate(0)  # where the curves start: the base model
        # Ctrl-C lands anywhere in an update: after the random draws, or after the optimizer step but
        # before the update is counted. A checkpoint taken there would resume one draw or one update
        # off, so Ctrl-C only asks to stop, and the run stops once the update under way is done.
        # (One process only: under `accelerate launch` the processes could stop at different updates
        # and leave the others waiting for them, so there Ctrl-C stops at once, as before.)
        if self.accelerator.num_processes == 1 and threading.current_thread() is threading.main_thread():
            self.sigint_handler = signal.signal(signal.SIGINT, self.stop_after_this_update) or signal.SIG_DFL
        for model in self.trained_models:
            model.train()
        self.clock.begin("training")
        self.started = time.perf_counter()
        return self

    def updates(self):
        from tqdm.auto import tqdm

        self.bar = tqdm(range(self.first_update, self.args.max_train_steps), initial=self.first_update,
                        total=self.args.max_train_steps, desc=self.description,
                        disable=not self.accelerator.is_main_process)
        return self.bar

    def record(self, **losses):
        """After an update: its losses (tensors, read later); then a checkpoint and a progress grid when due."""
        if self.cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        if self.losses.add(**losses) or self.losses.updates == self.first_update + 1:
            self.losses.flush()  # after the first update too: its time (warm-up, compiling) is reported apart
            self.bar.set_postfix(loss=f"{self.losses.smoothed:.4f}")
            if self.losses.updates == self.first_update + 1:
                self.first_update_seconds = time.perf_counter() - self.started
        done = self.losses.updates
        if done % self.args.progress_every == 0 or done == self.args.max_train_steps:
            self.save_progress_grid(done)
            self.evaluate(done)
        if done % self.args.checkpoint_every == 0 or done == self.args.max_train_steps:
            self.save_checkpoint(done)  # after the evaluation, so that the checkpoint's curve includes it
        if self.stop_requested and done < self.args.max_train_steps:
            self.stopped_after_update = True
            raise KeyboardInterrupt

    def stop_after_this_update(self, signum, frame):
        """Ctrl-C during the loop: finish this update, then save a checkpoint and stop; a second Ctrl-C
        stops at once, keeping only the checkpoints already saved."""
        if self.stop_requested:
            raise KeyboardInterrupt
        self.stop_requested = True
        print("\nCtrl-C: stopping after this update, with a checkpoint (Ctrl-C again stops at once, without one)",
              file=sys.stderr)

    def __exit__(self, kind, error, traceback):
        try:
            if kind is KeyboardInterrupt and (self.stopped_after_update or self.accelerator.num_processes > 1) \
                    and self.losses.updates > self.first_update:
                if self.last_checkpoint != self.losses.updates:  # not saved already, as it was due
                    self.save_checkpoint(self.losses.updates)
                print(f"saved {self.args.adapter_dir}/checkpoint-{self.losses.updates}; "
                      "continue with --resume latest")
            elif kind is KeyboardInterrupt:
                print(f"stopped in the middle of an update, which is not saved; --resume latest continues from "
                      f"the latest checkpoint in {self.args.adapter_dir}", file=sys.stderr)
            elif kind is None:
                self.losses.flush()
        finally:
            if self.sigint_handler is not None:
                signal.signal(signal.SIGINT, self.sigint_handler)
            self.ended = time.perf_counter()
            self.clock.end()
            if self.bar is not None:
                self.bar.close()
        return False

    # --- what happens every few updates ------------------------------------------------------------

    def save_checkpoint(self, update):
        self.losses.flush()  # a non-finite loss stops the run here, before its weights are saved
        scaler = self.accelerator.scaler  # fp16's gradient scaler: its loss scale and growth count
        # Every process saves its own random state; process 0 also the shared rest.
        with self.clock.phase("checkpoints"):
            save_checkpoint(self.args.adapter_dir / f"checkpoint-{update}", self.trainable, self.optimizer,
                            self.lr_scheduler, self.generator,
                            {"update": update, "history": self.history, "evaluation": self.evaluations,
                             "settings": self.settings,
                             "seconds": self.seconds_before + time.perf_counter() - self.started,
                             "grad_scaler": None if scaler is None else scaler.state_dict()},
                            rank=self.accelerator.process_index)
            limit = getattr(self.args, "checkpoints_total_limit", None)
            if limit:
                self.accelerator.wait_for_everyone()  # every process's part of the new one is written
                if self.accelerator.is_main_process:
                    prune_checkpoints(self.args.adapter_dir, limit)
        self.last_checkpoint = update

    def save_progress_grid(self, update):
        from common.generation import generate
        from common.grids import labelled_grid
        from common.saving import save_figure

        self.losses.flush()  # on every process, so that a NaN stops them all at the same update
        if not self.accelerator.is_main_process:
            return
        args = self.args
        with self.clock.phase("progress grids"), sampling(self.accelerator, self.trained_models):
            images = generate(self.pipe, self.progress_prompts, self.progress_seeds, steps=args.steps,
                              resolution=args.resolution, guidance=args.guidance,
                              batch_size=len(self.progress_prompts), desc="progress grid")
        save_figure(labelled_grid(images, self.progress_prompts, cols=len(images), suptitle=f"after {update} updates"),
                    args.output_dir / self.progress_folder / f"step_{update:05d}.png")

    def evaluate(self, update):
        """The fixed-noise evaluation loss now, with the models as they sample (eval mode, the training's
        autocast); the pipeline's bare UNet, so that no wrapper (DDP, torch.compile) is involved."""
        if self.evaluation is None or not self.accelerator.is_main_process:
            return
        with self.clock.phase("evaluation"), sampling(self.accelerator, self.trained_models):
            losses = self.evaluation(self.pipe.unet)
        self.evaluations["update"].append(update)
        for role, value in losses.items():
            self.evaluations.setdefault(role, []).append(round(value, 6))

    # --- after the loop ----------------------------------------------------------------------------

    def summary(self):
        """The summary JSON's fields that both trainers share."""
        updates = len(self.history["total"])
        seconds = self.seconds_before + self.ended - self.started
        final = {name: round(smooth(values)[-1], 5) for name, values in self.history.items() if values}
        return {
            "optimizer_updates": updates,
            "wall_seconds": round(seconds, 1),
            "seconds_per_update": round(seconds / updates, 4),
            "final_smoothed_loss": final["total"] if list(self.history) == ["total"] else final,  # one loss: a number
            **self.clock.summary(updates - self.first_update, self.first_update_seconds),
            **({"evaluation_loss": self.evaluations} if self.evaluations["update"] else {}),
        }

    def plot_loss_curves(self, path, title):
        return plot_loss_curves(self.history, path, title, self.evaluations)

    def describe(self):
        """The closing line: updates, speed, and the seconds of each phase."""
        return self.clock.describe(len(self.history["total"]) - self.first_update, self.first_update_seconds)

"""common/training_run.py: the loss log read in batches, the phase clock."""

import pytest
import torch

from common.errors import UserError
from common.training_run import LossLog, smooth


def test_loss_log_keeps_every_update_in_order_and_smooths_like_smooth():
    history = {"total": [], "instance": [], "prior": []}
    log = LossLog(history, "adapter", every=3)
    values = [0.5, 0.25, 0.75, 0.125, 1.0]
    due = [log.add(total=torch.tensor(v), instance=torch.tensor(v / 2), prior=torch.tensor(v / 4)) for v in values]
    assert due == [False, False, True, True, True]  # flush is due from the 3rd pending update on
    assert history["total"] == [] and log.updates == 5  # nothing read from the device yet
    log.flush()
    assert history["total"] == values and history["instance"] == [v / 2 for v in values]
    assert log.updates == 5 and log.smoothed == pytest.approx(smooth(values)[-1])
    log.flush()  # nothing pending: nothing changes
    assert len(history["total"]) == 5
    # a resumed run picks up the average where the saved history left it
    resumed = LossLog({"total": list(values), "instance": [], "prior": []}, "adapter")
    assert resumed.smoothed == pytest.approx(log.smoothed)


def test_loss_log_without_prior_leaves_the_prior_curve_empty():
    history = {"total": [], "instance": [], "prior": []}
    log = LossLog(history, "adapter")
    log.add(total=torch.tensor(1.0), instance=torch.tensor(1.0), prior=None)
    log.flush()
    assert history == {"total": [1.0], "instance": [1.0], "prior": []}


def test_loss_log_names_the_first_non_finite_update_and_keeps_nothing_after_it():
    history = {"total": [0.3, 0.2]}  # two updates from an earlier run
    log = LossLog(history, "models/x")
    for value in (0.1, float("nan"), 0.1):
        log.add(total=torch.tensor(value))
    with pytest.raises(UserError, match=r"became nan at update 4;.*models/x.*--learning-rate"):
        log.flush()
    assert history["total"] == pytest.approx([0.3, 0.2, 0.1])


def test_phase_clock_counts_a_nested_phase_once_and_reports_speed_after_the_first_update(monkeypatch):
    import common.training_run as training
    from common.training_run import PhaseClock

    now = [0.0]
    monkeypatch.setattr(training.time, "perf_counter", lambda: now[0])
    clock = PhaseClock()
    with clock.phase("class images"):
        now[0] += 12.0
    with clock.phase("training"):
        now[0] += 50.0
        with clock.phase("progress grids"):
            now[0] += 8.0
        now[0] += 50.0
    assert clock.seconds == {"class images": 12.0, "training": 100.0, "progress grids": 8.0}
    fields = clock.summary(updates=201, first_update_seconds=20.0)
    assert fields["updates_per_second"] == pytest.approx(200 / 80)  # the first update's warm-up left out
    assert clock.describe(201, 20.0) == ("201 updates (2.5 updates/s after the first); class images 12 s, "
                                         "training 100 s, progress grids 8.0 s; total 120 s")
    assert "updates_per_second" not in clock.summary(updates=1, first_update_seconds=20.0)

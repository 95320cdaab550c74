"""common/device.py: device, precision and CPU threads."""

import torch

from common.device import cpu_threads, pick_device


def test_threads_follow_how_busy_the_cpu_is_unless_given(monkeypatch):
    import psutil

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: 4 if not logical else 8)
    monkeypatch.setattr("os.cpu_count", lambda: 8)
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 3.0)  # an idle machine
    assert cpu_threads("auto") == 4  # one per physical core
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 12.5)  # a browser: one logical CPU
    assert cpu_threads("auto") == 3  # the cores it leaves free
    monkeypatch.setattr(psutil, "cpu_percent", lambda interval=None: 50.0)  # 4 of 8 logical CPUs busy
    assert cpu_threads("auto") == 1  # at least one
    assert cpu_threads(3) == 3
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # as `accelerate launch` sets it for each process
    assert cpu_threads("auto") == 2


def test_precision_follows_the_device_unless_given():
    assert pick_device("cpu", threads=1) == (torch.device("cpu"), torch.float32)
    assert pick_device("cpu", "bf16", threads=1)[1] == torch.bfloat16
    assert torch.get_num_threads() == 1

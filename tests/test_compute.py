"""Lanes (imagegen/engine/compute.py): torch's work one call at a time, in order, on a thread
that goes away once idle, and with it the OpenMP team torch started on it."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from imagegen.engine.compute import Lane


def os_threads() -> int:
    """This process's threads as the kernel counts them, OpenMP's included."""
    return len(os.listdir("/proc/self/task"))


def until(condition: object, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return True
        time.sleep(0.01)
    return False


def test_calls_run_one_at_a_time_in_the_order_submitted() -> None:
    lane = Lane("test-order")
    spans: list[tuple[int, float, float]] = []

    def call(k: int) -> int:
        started = time.perf_counter()
        time.sleep(0.02)
        spans.append((k, started, time.perf_counter()))
        return k * k

    futures = [lane.submit(lambda k=k: call(k)) for k in range(5)]
    assert [f.result(timeout=5) for f in futures] == [0, 1, 4, 9, 16]
    assert [k for k, _, _ in spans] == list(range(5))
    assert all(spans[i][2] <= spans[i + 1][1] for i in range(4))  # never overlapping


def test_an_error_reaches_the_caller_and_the_lane_goes_on() -> None:
    lane = Lane("test-error")

    def fail() -> None:
        raise ValueError("bad call")

    with pytest.raises(ValueError, match="bad call"):
        lane.submit(fail).result(timeout=5)
    assert lane.submit(lambda: "next").result(timeout=5) == "next"


def test_a_call_submitted_from_the_lane_itself_runs_at_once() -> None:
    """As the generator's batcher does: the whole batch in the lane, its pipeline calls too."""
    lane = Lane("test-nested")
    outer = lane.submit(lambda: lane.submit(lambda: "inner").result(timeout=1))
    assert outer.result(timeout=5) == "inner"


def test_calls_close_together_share_a_thread_and_an_idle_lane_lets_it_go() -> None:
    lane = Lane("test-linger", linger=0.2)
    first = lane.submit(threading.get_ident).result(timeout=5)
    assert lane.submit(threading.get_ident).result(timeout=5) == first
    assert until(lambda: not any(t.name == "test-linger" for t in threading.enumerate()))
    # A call after that starts a thread again.
    assert lane.submit(lambda: threading.current_thread().name).result(timeout=5) == "test-linger"


@pytest.mark.skipif(torch.get_num_threads() < 2, reason="one torch thread starts no team")
def test_the_openmp_team_torch_starts_in_a_lane_goes_when_the_lane_is_idle() -> None:
    """The reason lanes exist: a thread that ran a parallel region keeps its team of OpenMP
    threads until it exits, and an idle team slows every other team on the same cores."""
    lane = Lane("test-team", linger=0.2)
    big = torch.ones(4_000_000)  # far above torch's grain size: a parallel region
    _, during = lane.submit(lambda: (torch.sin(big).sum().item(), os_threads())).result(30)
    # The lane's thread and its team's worker(s) leave together.
    assert until(lambda: os_threads() <= during - 2)


# A process whose main thread ends while a lane is inside torch, with a call queued behind.
EXIT_MID_CALL = """
import time, torch
from imagegen.engine.compute import Lane
lane = Lane("exiting")
x, w = torch.randn(64, 512), torch.randn(512, 512)
def work():
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        torch.nn.functional.linear(x, w)  # releases the GIL, as a pipeline's layers do
    print("the running call ended", flush=True)
lane.submit(work)
lane.submit(lambda: print("the queued call ran", flush=True))
time.sleep(0.3)
"""


def test_the_interpreters_exit_waits_for_the_running_call_and_drops_the_queue() -> None:
    """Ended mid-call, a daemon thread in torch's C++ aborts the process at exit
    (`terminate called without an active exception`, exit status 134)."""
    done = subprocess.run(
        [sys.executable, "-c", EXIT_MID_CALL], capture_output=True, text=True, timeout=120
    )
    assert (done.returncode, done.stdout) == (0, "the running call ended\n"), done.stderr

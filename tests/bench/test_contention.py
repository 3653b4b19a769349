"""bench contention's measurement and row, and engine.threads' choice (no training here)."""
import os
import subprocess
import sys

from bench import contention
from engine import threads


def test_steady_rate_skips_the_first_steps_and_uses_arrival_times():
    events = [{"event": "progress", "iteration": i, "_wall": 100.0 + 0.5 * i} for i in (1, 5, 11, 20, 31)]
    events.insert(2, {"event": "stage", "_wall": 0.0})
    assert contention.steady_rate(events) == (31 - 11) / ((31 - 11) * 0.5)
    assert contention.steady_rate(events[:2]) is None


def test_the_row_has_the_ratios():
    row = contention.rows({"cpu": "X", "cores": 2}, 150, alone=4.0, one=2.5, busy=2.0, chosen="1 CPU thread",
                          date="2026-12-02")
    assert row["one thread / alone"] == "0.62" and row["beside busy / one thread"] == "0.80"
    assert set(row) == set(contention.SPEC["columns"])


def test_marble_threads_overrides_the_choice(monkeypatch):
    monkeypatch.setenv(threads.THREADS_ENV, "3")
    assert threads.choose_threads() == (3, "MARBLE_THREADS=3")


def test_a_busy_neighbour_is_counted_and_leaves_at_least_one_thread(monkeypatch):
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    if not os.path.exists("/proc/stat"):
        assert threads.busy_cores() == 0.0
        return
    neighbour = subprocess.Popen([sys.executable, "-c", contention.BUSY])
    try:
        busy = threads.busy_cores(interval=0.5)
        chosen, why = threads.choose_threads()
    finally:
        neighbour.kill()
        neighbour.wait()
    assert 0.5 <= busy <= (os.cpu_count() or 1) + 0.01
    assert 1 <= chosen <= threads.usable_cores() - 0 and "busy" in why


def test_processes_of_one_job_share_the_cores(monkeypatch):
    """torchrun's ranks on one machine divide its cores (they start together, before the load shows
    them); rank 0 training frame 0 alone takes them all, whatever the waiting ranks' start-up load."""
    monkeypatch.delenv(threads.THREADS_ENV, raising=False)
    monkeypatch.setattr(threads, "usable_cores", lambda: 8)
    monkeypatch.setattr(threads, "busy_cores", lambda *a, **k: 3.0)
    assert threads.choose_threads(share=2) == (4, "8 cores shared by 2 processes of the job")
    assert threads.choose_threads(share=16)[0] == 1
    assert threads.choose_threads(count_busy=False) == (8, "8 cores")
    assert threads.choose_threads()[0] == 5


def test_openmp_workers_wait_passively_unless_the_user_chose(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    threads.configure_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    threads.configure_openmp()
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"

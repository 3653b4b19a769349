"""How many CPU threads torch gets, chosen when the engine starts (standard library only).

torch's OpenMP workers spin while they wait for each other; beside another busy process, a worker
whose core is taken leaves the others spinning, and a job on 2 cores ran more than twice as slow as
alone. So the workers wait passively (OMP_WAIT_POLICY, which must be set before torch is imported),
and the engine takes the cores that are idle when it starts, not all of them. MARBLE_THREADS=N
overrides the choice. `python3 build.py bench contention` measures the effect.
"""
import os
import time

THREADS_ENV = "MARBLE_THREADS"


def configure_openmp():
    """Call before importing torch: idle OpenMP workers sleep instead of spinning (unless the user set
    the policy)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def usable_cores():
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def busy_cores(interval=0.3):
    """Cores other processes keep busy right now, from /proc/stat over `interval` seconds (this process
    sleeps meanwhile); 0.0 where /proc/stat cannot be read."""
    def sample():
        with open("/proc/stat", encoding="ascii") as f:
            values = [int(v) for v in f.readline().split()[1:]]
        idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
        return sum(values), idle

    try:
        total0, idle0 = sample()
        time.sleep(interval)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    elapsed = total1 - total0
    if elapsed <= 0:
        return 0.0
    cores = os.cpu_count() or 1
    return cores * (1.0 - (idle1 - idle0) / elapsed)


def choose_threads(share=1, count_busy=True):
    """(threads, why): MARBLE_THREADS when set, else the usable cores minus those other processes keep busy,
    divided among `share` processes of one job on this machine (torchrun's ranks start together, before
    the load shows them); every core with count_busy off."""
    value = os.environ.get(THREADS_ENV, "").strip()
    if value:
        try:
            return max(1, int(value)), f"{THREADS_ENV}={value}"
        except ValueError:
            pass
    cores = usable_cores()
    if share > 1:
        return max(1, cores // share), f"{cores} cores shared by {share} processes of the job"
    if not count_busy:
        return cores, f"{cores} cores"
    busy = busy_cores()
    threads = max(1, min(cores, int(round(cores - busy))))
    return threads, f"{cores} cores, {busy:.1f} busy with other work"

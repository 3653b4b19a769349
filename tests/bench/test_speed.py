"""The speed benchmark's harness (`python3 build.py bench speed`, bench/speed*.py): the memory floor's
byte count, the timing of the encoding, the steady training rate, the rows and the --from-json merge.
Light: tiny grids and point counts, no training."""
import argparse
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO

from bench import registry, speed_probe, speed_rows, speed_runs
from bench import speed as speed_side
from bench.compile import compile_rows
from tools import BuildError

MACHINE = {"date": "2026-12-01", "cpu": "Test CPU", "cores": 2, "gpu": "Test GPU", "device": "cuda",
           "torch": "2.11.0+cu130", "triton": "3.6.0", "load": 0.1}


def small_grid_config():
    from engine.nn.encoding import HashGridConfig
    return HashGridConfig(levels=3, features=2, log2_table=10, base_resolution=4, finest_resolution=32)


def test_the_memory_floor_counts_every_lookups_bytes():
    # By hand, 2 levels x 4 features with float32 tables, per level: forward 8 corners x 4 features x 4 B
    # = 128; backward 8 x 4 x (4 B read + 4 B written) = 256; output 4 x 4 B written + gradient 4 x 4 B
    # read = 32; so 416 a level, 832 for both, plus the point's 3 x 4 B = 844.
    assert speed_rows.floor_bytes_per_point(2, 4, 4) == 844
    # float16 tables halve the forward reads only: 64 + 256 + 32 = 352 a level.
    assert speed_rows.floor_bytes_per_point(2, 4, 2) == 2 * 352 + 12
    # Taps: 7 lookups a point, the point itself read once.
    assert speed_rows.floor_bytes_per_point(2, 4, 4, taps=7) == 7 * 832 + 12
    # The fast grid (14 levels x 2 features), as the table's description quotes it.
    assert speed_rows.floor_bytes_per_point(14, 2, 4) == 2924
    assert speed_rows.floor_bytes_per_point(14, 2, 2) == 2476


def test_the_encoding_measurement_on_the_cpu_is_self_consistent():
    cfg = small_grid_config()
    grid = speed_probe.make_grid(cfg, "torch", "cpu", False)
    bandwidth = speed_probe.copy_bandwidth("cpu", mib=8)
    assert bandwidth["bytes_per_s"] > 1e8 and bandwidth["reps"] >= 5
    for taps in (False, True):
        entry = speed_probe.measure_encoding(grid, 512, "cpu", bandwidth["bytes_per_s"], taps=taps, budget_s=0.05)
        lookups = 7 if taps else 1
        assert entry["part"] == ("taps" if taps else "encoding") and entry["lookups_per_point"] == lookups
        assert entry["reps"] >= 3 and 0 < entry["min_s"] <= entry["seconds"]
        assert entry["points_per_s"] == pytest.approx(512 / entry["seconds"])
        assert entry["table_bytes"] == 4
        assert entry["floor_bytes_per_point"] == speed_rows.floor_bytes_per_point(3, 2, 4, lookups)
        assert entry["floor_points_per_s"] == pytest.approx(bandwidth["bytes_per_s"] / entry["floor_bytes_per_point"])
        assert entry["ratio"] == pytest.approx(entry["floor_points_per_s"] / entry["points_per_s"])
    # The backward reached the tables (gradients for them only: the points need none).
    assert grid.table.grad is not None and grid.table.grad.abs().sum() > 0


def test_interpreted_triton_is_never_timed():
    chosen, skipped = speed_probe.encoding_backends("cpu", 2, ["torch", "triton"])
    assert chosen == ["torch"] and "interpret" in skipped["triton"].lower()
    assert speed_probe.encoding_backends("cpu", 2)[0] == ["numba", "torch"]  # both CPU encodings are timed
    assert speed_probe.half_choices("auto", "torch", "cuda") == [False]
    assert speed_probe.half_choices("both", "triton", "cuda") == [False, True]
    assert speed_probe.half_choices("auto", "triton", "cuda") == [True]   # the engine's own choice on a GPU


def progress(iteration, t, samples=None, levels=14, **extra):
    event = {"event": "progress", "iteration": iteration, "total": 100, "t": t, "frame": None, "levels": levels}
    if samples is not None:
        event["samples"] = samples
    return {**event, **extra}


def test_the_steady_rate_leaves_out_the_first_steps():
    config = {"train": {"start_levels": 4, "level_every": 50}, "encoding": {"levels": 14}}
    assert speed_runs.steady_start(config, 15000) == 500      # once every level is open
    assert speed_runs.steady_start(config, 20) == 4           # a short run: after the first fifth
    assert speed_runs.steady_start(config, 4) == 2
    # The first step is slow (occupancy grid, compiling): from step 4 on, 2 steps a second.
    events = [{"event": "started"}, progress(1, 10.0, 900, levels=4), progress(2, 11.0, 1000)]
    events += [progress(i, 11.0 + (i - 2) * 0.5, 1000 + 100 * (i % 2)) for i in range(3, 21)]
    rate = speed_runs.steady_rate(events, 4)
    assert rate["it_per_s"] == pytest.approx(2.0) and (rate["first"], rate["last"]) == (4, 20)
    assert rate["samples_per_step"] == pytest.approx(1050.0, rel=0.01)
    assert rate["samples_per_s"] == pytest.approx(2.0 * rate["samples_per_step"])
    assert rate["levels"] == [14, 14]
    # A run stopped at step 20 of 15,000 (timeout): measured over the steps it reached.
    assert speed_runs.steady_rate(events, speed_runs.steady_start(config, 15000)) is None
    assert speed_runs.run_rate(events, config, 15000) == rate
    # Without the `samples` field the column stays blank; a dynamic job's frame is picked by its number.
    assert speed_runs.steady_rate([progress(i, i * 1.0) for i in range(10)], 2)["samples_per_s"] is None
    frames = [progress(i, i * 1.0, frame=3, phase="train") for i in range(10)]
    frames += [progress(i, 100 + i * 9.0, frame=3, phase="predict") for i in range(10)]
    assert speed_runs.steady_rate(frames, 2, frame=3)["it_per_s"] == pytest.approx(1.0)
    assert speed_runs.steady_rate(frames[:1], 0, frame=3) is None


def sample_result():
    """A result as `python -m bench.speed_probe --json` writes it, with round numbers."""
    grid = {"levels": 14, "features": 2, "log2_table": 19, "base_resolution": 16, "finest_resolution": 2048}
    bandwidth = 1e12                      # 1 TB/s
    encoding = []
    for part, lookups, seconds in (("encoding", 1, 0.001), ("taps", 7, 0.02)):
        per_point = speed_rows.floor_bytes_per_point(14, 2, 2, lookups)
        floor_s = 2 ** 18 * per_point / bandwidth
        encoding.append({"part": part, "points": 2 ** 18, "log2_points": 18.0, "lookups_per_point": lookups,
                         "seconds": seconds, "min_s": seconds, "reps": 20, "points_per_s": 2 ** 18 / seconds,
                         "table_bytes": 2, "floor_bytes_per_point": per_point, "copy_bytes_per_s": bandwidth,
                         "floor_s": floor_s, "floor_points_per_s": 2 ** 18 / floor_s, "ratio": seconds / floor_s,
                         "backend": "triton", "half_table": True, "grid": grid, "preset": "fast"})
    started = {"device": "cuda", "backend": "triton", "half_table": True, "preset": "fast"}
    train = {"data": "torus", "rig": {"views": 40, "frames": 1, "cameras": 40, "size": [160, 160]},
             "requested_backend": "auto", "iterations": 1000, "wall_s": 60.0, "timed_out": False,
             **started, "it_per_s": 25.0, "first": 500, "last": 1000, "samples_per_step": 400000.0,
             "samples_per_s": 1e7, "rays_per_step": 4096, "levels": [14, 14]}
    dtu = {"data": "dtu_scan24", "rig": {"views": 49, "frames": 1, "cameras": 49, "size": [1600, 1200]},
           "downscale": 1, "wall_s": 160.0, "timed_out": False, "mesh_wall_s": 150.0, "mesh_t": 148.0,
           "reached": 15000, **started, "iterations": 15000, "it_per_s": 110.0, "first": 500, "last": 15000,
           "samples_per_step": None, "samples_per_s": None, "levels": [14, 14]}
    dynamic = {"data": "data", "rig": {"views": 160, "frames": 8, "cameras": 20, "size": [128, 128]},
               "wall_s": 300.0, "timed_out": False, "frames_done": 3, "frames_trained": 3,
               "frame_seconds": [90.0, 12.0, 14.0],
               "first_iterations": 15000, "frame_iterations": 2000, "prediction_iterations": 300,
               "predict": True, "resolution": 512, **started, "seconds_per_frame": 13.0}
    return {"benchmark": "speed", "format": 1, "machine": MACHINE, "parts": list(speed_rows.PARTS),
            "copy": {"bytes_per_s": bandwidth, "mib": 1024, "reps": 30}, "encoding": encoding, "train": [train],
            "dtu": dtu, "dynamic": dynamic, "skipped": {}, "failed": []}


def test_the_rows_of_a_result():
    rows = speed_rows.build_rows(sample_result())
    assert [r["part"] for r in rows] == ["encoding", "taps", "train", "dtu", "dynamic"]
    spec = registry.BENCHMARKS["speed"]
    assert set(spec["key"]) <= set(spec["columns"])
    for row in rows:
        assert list(row) == spec["columns"] and all(isinstance(v, str) for v in row.values())
        assert (row["date"], row["gpu"], row["device"], row["backend"]) == ("2026-12-01", "Test GPU", "cuda", "triton")
    encoding, taps, train, dtu, dynamic = rows
    # 2^18 points in 1 ms: 262 M points/s; the floor: 1 TB/s over 2,476 B = 404 M points/s, so 1.54x its time.
    assert (encoding["workload"], encoding["tables"], encoding["ms"]) == ("2^18 points", "fp16", "1.00")
    assert (encoding["M points/s"], encoding["floor M points/s"], encoding["x floor"]) == ("262", "404", "1.54")
    assert (encoding["copy GB/s"], encoding["met"]) == ("1000", "yes") and "2476 B/point" in encoding["notes"]
    assert taps["workload"] == "2^18 points x 7 taps" and taps["target"] == "" and taps["met"] == ""
    assert taps["floor M points/s"] == "57.9"                 # 1e12 / (7 x 2,464 + 12) / 1e6
    assert train["workload"] == "torus 40 views 160x160, 1000 it"
    assert (train["it/s"], train["M samples/s"]) == ("25.0", "10.0")
    assert train["notes"] == "steps 500-1000, 14 levels, 0.400 M samples/step"   # no load note on a GPU
    assert dtu["workload"] == "scan24 49 views 1600x1200, 15000 it" and dtu["M samples/s"] == ""
    assert (dtu["minutes"], dtu["met"], dtu["it/s"]) == ("2.50", "yes", "110")
    assert dynamic["workload"] == "3 of 8 frames x 20 cameras 128x128, 15000 + 2000 + 300 it, mesh 512"
    assert (dynamic["s/frame"], dynamic["met"]) == ("13.0", "yes")
    assert dynamic["notes"] == "first frame 90.0 s; 2 later frames"
    # A run that missed: the ratio over 2, no DTU mesh before the timeout.
    result = sample_result()
    result["encoding"][0]["ratio"] = 3.1
    result["dtu"].update(mesh_wall_s=None, timed_out=True, reached=9000, wall_s=600.0)
    rows = speed_rows.build_rows(result)
    assert rows[0]["met"] == "no" and rows[3]["minutes"] == "" and rows[3]["met"] == ""
    assert rows[3]["notes"].startswith("no mesh: timed out at iteration 9000 after 10.0 min")
    # On a CPU the load average at the start goes into every row's notes.
    result["machine"] = {**MACHINE, "device": "cpu", "gpu": None, "load": 1.96}
    for entry in result["encoding"] + result["train"] + [result["dtu"], result["dynamic"]]:
        entry["device"] = "cpu"
    rows = speed_rows.build_rows(result)
    assert all(r["notes"].endswith("load 2.0 at start") and r["gpu"] == "-" for r in rows)


def test_from_json_merges_the_rows_into_the_doc(monkeypatch, tmp_path):
    doc = str(tmp_path / "benchmarks.md")
    monkeypatch.setattr(registry, "BENCHMARKS_DOC", doc)
    gpu = tmp_path / "gpu.json"
    gpu.write_text(json.dumps(sample_result()))
    assert registry.main(["speed", "--from-json", str(gpu)]) == 0
    text = open(doc, encoding="utf-8").read()
    assert "## speed: " in text and "memory floor" in text and text.count("| Test GPU |") == 5
    # A second machine adds its rows; the same machine again replaces its own (the key columns match).
    other = sample_result()
    other["machine"] = {**MACHINE, "gpu": "Other GPU"}
    (tmp_path / "other.json").write_text(json.dumps(other))
    again = sample_result()
    again["encoding"][0]["seconds"] = 0.003
    again["encoding"][0]["ratio"] = 0.003 / again["encoding"][0]["floor_s"]
    gpu.write_text(json.dumps(again))
    assert registry.main(["speed", "--from-json", str(tmp_path / "other.json"), "--from-json", str(gpu)]) == 0
    rows = registry.parse_table(open(doc, encoding="utf-8").read().split("## speed: ")[1].splitlines())
    assert len(rows) == 10 and sum(r["gpu"] == "Test GPU" for r in rows) == 5
    mine = next(r for r in rows if r["gpu"] == "Test GPU" and r["part"] == "encoding")
    assert mine["ms"] == "3.00" and mine["x floor"] == "4.62" and mine["met"] == "no"
    # Not a speed result: refused with a message.
    (tmp_path / "bad.json").write_text(json.dumps({"rows": []}))
    with pytest.raises(BuildError, match="not a result"):
        speed_side.run(argparse.Namespace(from_json=[str(tmp_path / "bad.json")]))


def test_the_module_runs_without_torch_at_import_and_writes_its_json(tmp_path):
    # build.py and the registry with the standard library alone; the probe's module level too.
    code = ("import sys; sys.modules['torch'] = sys.modules['numpy'] = None; "
            "import bench.speed_probe, bench.registry, build; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr
    # The command line end to end on a tiny point count (the fast grid, the CPU's numba and torch backends).
    path = tmp_path / "speed.json"
    out = subprocess.run([sys.executable, "-m", "bench.speed_probe", "--parts", "encoding", "--device", "cpu",
                          "--points", "8", "--budget-s", "0.01", "--copy-mib", "8", "--json", str(path)],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(path.read_text())
    assert result["machine"]["device"] == "cpu" and result["copy"]["mib"] == 8
    assert [(e["part"], e["backend"], e["points"]) for e in result["encoding"]] == [
        ("encoding", "numba", 256), ("taps", "numba", 256), ("encoding", "torch", 256), ("taps", "torch", 256)]
    if os.environ.get("TRITON_INTERPRET") == "1":        # conftest's, without a GPU: usable, never timed
        assert "encoding triton" in result["skipped"]
    assert [r["part"] for r in result["rows"]] == ["encoding", "taps", "encoding", "taps"]
    assert result["rows"] == speed_rows.build_rows(result)


def test_compile_rows_summarise_each_architecture_and_kernel():
    results = [
        {"capability": 90, "kernel": "_sdf_value", "table": "fp32", "constexprs": {"F": 2}, "ok": True,
         "cubin_bytes": 2048, "seconds": 0.5},
        {"capability": 90, "kernel": "_sdf_value", "table": "fp16", "constexprs": {"F": 8}, "ok": True,
         "cubin_bytes": 4096, "seconds": 1.5},
        {"capability": 80, "kernel": "_sdf_value", "table": "fp32", "constexprs": {"F": 2}, "ok": False,
         "error": "CompilationError: cx is already defined", "seconds": 0.25},
    ]
    rows = compile_rows(results, {"cpu": "CPU", "cores": 2}, date="2026-12-02")
    assert [(r["target"], r["launches"]) for r in rows] == [("sm_80", "0 of 1"), ("sm_90", "2 of 2")]
    sm90 = rows[1]
    assert (sm90["cold s max"], sm90["cold s total"], sm90["cubin KB max"]) == ("1.50", "2.0", "4")
    assert '{"F": 8} fp16' in sm90["notes"]
    assert rows[0]["cubin KB max"] == "" and "cx is already defined" in rows[0]["notes"]
    assert set(rows[0]) == set(registry.BENCHMARKS["compile"]["columns"])

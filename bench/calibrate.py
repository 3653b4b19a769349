"""calibrate: DTU scan 24 and the fox from their photographs alone (`python3 build.py bench calibrate`):
registered views, seconds per phase, and the poses against the given rigs after a similarity fit."""
import json
import os
import shutil
import subprocess
import sys

from bench.engine_run import last_event, run_engine
from bench.harness import OUT, fmt, today
from bench.machine import machine_info
from tools import REPO, BuildError, log
from tools.env import ensure_setup
from tools.sandbox import isolated_env
from tools.shared_data import shared_data_dir, skipped_message

SPEC = {
    "title": "calibrate: DTU scan 24 and the fox from their photographs alone",
    "columns": ["date", "scene", "cpu", "cores", "mapper", "max px", "registered", "read s", "features s",
                "matching s", "mapping s", "total s", "centre err % (median)", "centre err % (max)",
                "rotation err deg (median)", "rotation err deg (max)", "focal err %", "region / given"],
    "key": ["scene", "cpu", "cores", "mapper", "max px"],
}
CALIBRATE_OUT = os.path.join(OUT, "calibrate")
# The photographs of each capture, and the rig the poses are compared with.
CAPTURES = {
    "dtu": {"images": ("dtu_scan24", "image"), "rig": ("dtu_scan24", "cameras_sphere.npz")},
    "fox": {"images": ("fox", "images"), "rig": ("fox", "transforms.json")},
}


def dataset_folder(scene):
    """Where `bench calibrate` leaves a capture's calibrated dataset (bench quality trains on it)."""
    return os.path.join(CALIBRATE_OUT, scene, "dataset")


def calibrate_capture(python, scene, data_dir, env, max_size=800, mapper="global"):
    """Run `python -m engine calibrate` on the capture's photographs; returns its `done` outputs."""
    capture = CAPTURES[scene]
    images = os.path.join(data_dir, *capture["images"])
    dataset = dataset_folder(scene)
    os.makedirs(os.path.dirname(dataset), exist_ok=True)
    arguments = ["calibrate", "--images", images, "--out", dataset, "--overwrite", "--max-size", str(max_size),
                 "--mapper", mapper]
    log("bench", f"{scene}: python -m engine {' '.join(arguments)}")
    run = run_engine(arguments, os.path.join(os.path.dirname(dataset), "calibrate.log"), f"{scene} calibrate",
                     python=python, env=env)
    done = last_event(run["events"], "done")
    if run["code"] != 0 or not done:
        message = last_event(run["events"], "error").get("message") or "no error event"
        raise BuildError(f"{scene}: calibrate failed (exit {run['code']}): {message}")
    return dict(done["outputs"], wall_s=run["wall_s"])


def compare_poses(python, dataset, rig, env):
    """The calibrated rig against the given one (python -m bench.pose_compare in the .venv: numpy)."""
    result = subprocess.run([python, "-m", "bench.pose_compare", dataset, rig], cwd=REPO, env=env,
                            capture_output=True, text=True)
    lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 or not lines:
        raise BuildError(f"comparing {dataset} with {rig} failed:\n{(result.stdout + result.stderr)[-2000:]}")
    return json.loads(lines[-1])


def run(options):
    data_dir = shared_data_dir()
    if data_dir is None:
        log("bench", skipped_message("calibrate"))
        return []
    python = ensure_setup(quiet=True)
    machine = machine_info()
    scenes = [s for s in (options.scenes or CAPTURES) if s in CAPTURES]
    rows = []
    folder = os.path.join(CALIBRATE_OUT, "sandbox")
    os.makedirs(folder, exist_ok=True)
    try:
        env = isolated_env(folder)
        for scene in scenes:
            try:
                outputs = calibrate_capture(python, scene, data_dir, env)
                poses = compare_poses(python, outputs["dataset"], os.path.join(data_dir, *CAPTURES[scene]["rig"]), env)
            except BuildError as exc:
                print(f"[bench] error: {exc}", file=sys.stderr, flush=True)
                options.failed.append(scene)
                continue
            seconds = outputs.get("seconds", {})
            log("bench", f"{scene}: {outputs['registered']} of {outputs['images']} registered; {json.dumps(poses)}")
            rows.append({
                "date": today(), "scene": scene, "cpu": machine["cpu"], "cores": str(machine["cores"]),
                "mapper": "global", "max px": "800", "registered": f"{outputs['registered']} of {outputs['images']}",
                "read s": fmt(seconds.get("read"), 1), "features s": fmt(seconds.get("features"), 1),
                "matching s": fmt(seconds.get("matching"), 1), "mapping s": fmt(seconds.get("mapping"), 1),
                "total s": fmt(outputs["wall_s"], 1),
                "centre err % (median)": fmt(poses["centre_error_median"], 2, 100),
                "centre err % (max)": fmt(poses["centre_error_max"], 2, 100),
                "rotation err deg (median)": fmt(poses["rotation_error_median"], 2),
                "rotation err deg (max)": fmt(poses["rotation_error_max"], 2),
                "focal err %": fmt(poses["focal_error"], 2, 100),
                "region / given": fmt(poses["region_ratio"], 2),
            })
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows

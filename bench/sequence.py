"""sequence: a long mesh sequence in Blender, as one object per frame and as one USD-streaming object
(`python3 build.py bench sequence`, also run by `bench dynamic`).

`python -m bench.sequence_data` (the .venv) writes 300 frames of a 50,000-vertex rippling, turning torus
as a dynamic job does (PLYs + sequence.json) and, from them, the USD sequence (engine.export.usd); then
`python -m bench.sequence_blender` imports each form into a fresh sandboxed Blender (the .venv's bpy and
every demo/out/venv-bpy*/bin/python there is, e.g. bpy 4.2 and 4.5; MARBLE_BENCH_BLENDERS=PY,... names
others, "" only the .venv's) and measures it. One row per machine, Blender and form.
"""
import glob
import os
import shutil
import sys
import tempfile

from bench.harness import OUT, fmt, sandboxed_result, today
from bench.machine import machine_info
from bench.sequence_data import torus_grid  # noqa: F401 (the dynamic benchmark's tests use it)
from tools import REPO, log
from tools.env import ensure_setup

SPEC = {
    "title": "sequence: a long mesh sequence in Blender, per-frame objects and a streamed USD",
    "columns": ["date", "cpu", "cores", "blender", "form", "frames", "vertices", "faces", "MiB", "write s",
                "import s", ".blend MiB", "RSS MiB", "RSS all frames MiB", "anon all frames MiB", "scrub s/frame",
                "frames ok"],
    "key": ["cpu", "cores", "blender", "form", "frames", "vertices"],
}
FRAMES, VERTICES = 300, 50000
FORMS = ("perframe", "usd")


def blender_pythons(python):
    """The Pythons whose bpy the benchmark runs: the .venv's, then MARBLE_BENCH_BLENDERS (comma-separated
    interpreters) when set, else every demo/out/venv-bpy*/bin/python."""
    listed = os.environ.get("MARBLE_BENCH_BLENDERS")
    if listed is not None:
        extra = [p.strip() for p in listed.split(",") if p.strip()]
    else:
        extra = sorted(glob.glob(os.path.join(OUT, "venv-bpy*", "bin", "python")))
    return [python] + [p for p in extra if os.path.abspath(p) != os.path.abspath(python)]


def write_data(python, folder, frames=FRAMES, vertices=VERTICES, small=False):
    """`python -m bench.sequence_data` into `folder`; its RESULT."""
    options = ["--small"] if small else ["--frames", str(frames), "--vertices", str(vertices)]
    return sandboxed_result("sequence-data", lambda _: [python, "-m", "bench.sequence_data", folder, *options])


def measure(python, folder, form, scrub=30):
    """`python -m bench.sequence_blender` of one form in the Blender of `python`; its RESULT."""
    return sandboxed_result(f"sequence-{form}", lambda _: [python, "-m", "bench.sequence_blender", folder,
                                                           "--form", form, "--scrub", str(scrub)])


def row(machine, data, result):
    form = result["form"]
    usd = form == "usd"
    return {
        "date": today(), "cpu": machine["cpu"], "cores": str(machine["cores"]), "blender": result["blender"],
        "form": "USD cache" if usd else "object per frame", "frames": str(data["frames"]),
        "vertices": str(data["vertices"]), "faces": str(data["faces"]),
        "MiB": fmt(data["usd_mib"] if usd else data["ply_mib"], 0),
        "write s": fmt(data["usd_s"] if usd else data["ply_s"], 1), "import s": fmt(result["import_s"], 2),
        ".blend MiB": fmt(result["blend_mib"], 1), "RSS MiB": fmt(result["import_rss_mib"], 0),
        "RSS all frames MiB": fmt(result["every_rss_mib"], 0),
        "anon all frames MiB": fmt(result.get("every_anon_mib"), 0), "scrub s/frame": fmt(result["scrub_s"], 4),
        "frames ok": f"{result['frames_right']}/{result['frames_checked']}",
    }


def run(options):
    python = ensure_setup()
    machine = machine_info()
    folder = tempfile.mkdtemp(prefix="sequence-bench-", dir=OUT)
    rows = []
    try:
        data = write_data(python, folder)
        log("bench", f"sequence: {data['frames']} frames of {data['vertices']} vertices: PLYs {data['ply_mib']:.0f} "
            f"MiB in {data['ply_s']:.1f} s, USD {data['usd_mib']:.0f} MiB in {data['usd_s']:.1f} s "
            f"(writer's peak RSS {data['peak_rss_mib'] or 0:.0f} MiB)")
        for blender in blender_pythons(python):
            for form in FORMS:
                try:
                    result = measure(blender, folder, form)
                except Exception as exc:  # one Blender failing leaves the others' rows
                    log("bench", f"sequence: {blender} {form} failed: {exc}")
                    getattr(options, "failed", []).append(f"{os.path.relpath(blender, REPO)} {form}")
                    continue
                if result["problem"]:
                    log("bench", f"sequence: {result['blender']} {form}: {result['problem']}")
                rows.append(row(machine, data, result))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main(argv=None):
    """`python -m bench.sequence`: the rows, printed (docs/benchmarks.md untouched)."""
    import argparse
    import json

    argparse.ArgumentParser(prog="python -m bench.sequence", description=__doc__.split("\n\n")[0]).parse_args(argv)
    options = argparse.Namespace(failed=[])
    for result in run(options):
        print(json.dumps(result))
    return 1 if options.failed else 0


if __name__ == "__main__":
    sys.exit(main())

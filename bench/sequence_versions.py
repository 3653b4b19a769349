"""Blender versions against both sequence forms: `python3 -m bench.sequence_versions` (standard library;
the .venv and any demo/out/venv-bpy*/bin/python, e.g. `python3.11 -m venv demo/out/venv-bpy42 &&
demo/out/venv-bpy42/bin/pip install "bpy==4.2.*" "numpy<2"`).

Writes the small check sequence (bench.sequence_data --small: 7 frames over 1-10 with gaps, three
topologies, canonical coordinates placed by turning, scaled world_from_canonical) as PLYs + sequence.json
and as the engine's USD, then in each Blender imports both forms through marble.import_sequence and
checks every frame of the range (the shown evaluated mesh's vertex count and world bounding box, a gap
holding the last mesh). Prints one line per Blender and form; exit 1 when any frame is wrong or a
Blender fails. Not a test: CI has no extra venvs.
"""
import os
import shutil
import sys
import tempfile

from bench.harness import OUT
from bench.sequence import FORMS, blender_pythons, measure, write_data
from tools import REPO
from tools.env import ensure_setup


def check_versions(pythons=None):
    """[(python, blender version, form, frames right, frames checked, problem)] for every Blender."""
    python = ensure_setup()
    folder = tempfile.mkdtemp(prefix="sequence-versions-", dir=OUT)
    results = []
    try:
        write_data(python, folder, small=True)
        for blender in pythons or blender_pythons(python):
            for form in FORMS:
                try:
                    result = measure(blender, folder, form, scrub=3)
                except Exception as exc:  # noqa: BLE001 (reported, the others still run)
                    results.append((blender, "?", form, 0, 0, str(exc)))
                    continue
                results.append((blender, result["blender"], form, result["frames_right"], result["frames_checked"],
                                result["problem"]))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return results


def main(argv=None):
    results = check_versions(argv or None)
    failed = False
    for python, version, form, right, checked, problem in results:
        ok = checked > 0 and right == checked
        failed |= not ok
        print(f"Blender {version:8} {form:9} {right}/{checked} frames right"
              f"{'' if ok else ': ' + problem}  ({os.path.relpath(python, REPO)})", flush=True)
    return 1 if failed or not results else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

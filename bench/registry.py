"""The benchmarks' registry (standard library only): which benchmarks there are, their descriptions
(bench/NAME.md, read at run time), running them, and docs/benchmarks.md.

Each benchmark is a module bench.NAME with `SPEC` (title, columns, key columns, and optionally the
benchmarks it `includes`) and `run(options)`, which returns a row (a dict of column -> string) or a
list of rows. A table's rows are keyed by the benchmark's key columns: a new run on the same
machine, device and backend replaces its row.
"""
import argparse
import importlib
import os
import re
import sys

from tools import REPO, log

NAMES = ("demo", "rigs", "jobs", "quality", "dynamic", "sequence", "speed", "compile", "contention", "calibrate",
         "texture", "scale")
BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
BENCHMARKS_DOC = os.path.join(REPO, "docs", "benchmarks.md")
BENCHMARKS_HEADER = ("# Benchmarks\n\nWritten by `python3 build.py bench [NAMES]`: one section per benchmark, "
                     "one row per machine, device and backend (a new run replaces its row). A timing is "
                     "only comparable with one taken on the same machine and backend.\n")


def read_about(name):
    """bench/NAME.md as the one paragraph docs/benchmarks.md shows (its lines joined by spaces)."""
    with open(os.path.join(BENCH_DIR, f"{name}.md"), encoding="utf-8") as f:
        paragraphs = re.split(r"\n\s*\n", f.read().strip())
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def _load():
    benchmarks = {}
    for name in NAMES:
        module = importlib.import_module(f"bench.{name}")
        benchmarks[name] = dict(module.SPEC, run=module.run, about=read_about(name))
    return benchmarks


BENCHMARKS = _load()


def markdown_table(columns, rows):
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")).replace("|", "/") for c in columns) + " |")
    return "\n".join(lines)


def parse_table(lines):
    """The rows (dicts by column) of the Markdown table in `lines`."""
    rows, columns = [], None
    for line in lines:
        if not line.startswith("|"):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if columns is None:
            columns = cells
        elif not all(set(c) <= set("-: ") for c in cells):
            rows.append(dict(zip(columns, cells)))
    return rows


def section_text(name, rows):
    spec = BENCHMARKS[name]
    return f"## {spec['title']}\n\n{spec['about']}\n\n" + markdown_table(spec["columns"], rows) + "\n\n"


def update_benchmarks_doc(name, row, path=None):
    """Put `row` into the section of benchmark `name` in docs/benchmarks.md, keeping the rest."""
    path = path or BENCHMARKS_DOC
    spec = BENCHMARKS[name]
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else BENCHMARKS_HEADER
    parts = re.split(r"(?m)^(?=## )", text)
    # The file ends its last section with one newline: give every section its blank line back.
    head, sections = parts[0], [s.rstrip("\n") + "\n\n" for s in parts[1:]]
    heading = f"## {name}"
    index = next((i for i, s in enumerate(sections) if s.splitlines()[0].strip().split(":")[0] == heading), None)
    rows = parse_table(sections[index].splitlines()) if index is not None else []
    rows = [r for r in rows if [r.get(k) or "" for k in spec["key"]] != [row.get(k) or "" for k in spec["key"]]]
    rows.append(row)
    section = section_text(name, rows)
    if index is None:
        sections.append(section)
    else:
        sections[index] = section
    if not head.endswith("\n\n"):
        head = head.rstrip("\n") + "\n\n"
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write((head + "".join(sections)).rstrip("\n") + "\n")
    return rows


def _comma_list(text):
    return [s.strip() for s in text.split(",") if s.strip()]


def parser():
    from bench.quality import QUALITY_SCENES
    from bench.speed_rows import PARTS
    from bench.texture import DEFAULT_FACES, DEFAULT_SCENES, DEFAULT_TEXTURE, TEXTURE_SCENES
    result = argparse.ArgumentParser(prog="build.py bench", description="Run benchmarks; update docs/benchmarks.md.")
    result.add_argument("names", nargs="*", help=f"benchmarks to run (default all: {', '.join(BENCHMARKS)})")
    result.add_argument("--iterations", type=int, default=0, help="training iterations (0: the preset's own)")
    result.add_argument("--no-write", action="store_true", help="print the table only")
    quality = result.add_argument_group("quality")
    quality.add_argument("--scenes", type=_comma_list,
                         help=f"comma-separated scenes (quality: default all of {','.join(QUALITY_SCENES)}; "
                              f"texture: of {','.join(TEXTURE_SCENES)}, default {','.join(DEFAULT_SCENES)})")
    quality.add_argument("--preset", default="cpu", help="engine preset (default cpu)")
    quality.add_argument("--views", type=int, default=64, help="views of a synthetic scene (default 64)")
    quality.add_argument("--size", type=int, help="image size of a synthetic scene (default: quality 200, dynamic 128)")
    quality.add_argument("--samples", type=int, default=16, help="Cycles samples per view (default 16)")
    quality.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                         help="override a preset field in the engine (repeatable; shown in the `settings` column)")
    dynamic = result.add_argument_group("dynamic")
    dynamic.add_argument("--frames", type=int, default=8, help="frames of the dynamic scene (default 8)")
    dynamic.add_argument("--cameras", type=int, default=20, help="cameras of the dynamic scene (default 20)")
    dynamic.add_argument("--resolution", type=int, default=128, help="marching cubes resolution per frame (default 128)")
    dynamic.add_argument("--processes", type=lambda text: [int(p) for p in _comma_list(text)],
                         help="scale: process counts to train the dynamic scene with (default 1,2)")
    texture = result.add_argument_group("texture")
    texture.add_argument("--faces", type=int, default=DEFAULT_FACES,
                         help=f"faces of the decimated and the textured export (default {DEFAULT_FACES})")
    texture.add_argument("--texture", type=int, default=DEFAULT_TEXTURE,
                         help=f"texture size in pixels of the textured export (default {DEFAULT_TEXTURE})")
    texture.add_argument("--retrain", action="store_true",
                         help="train the job again even when a finished one with the same settings is there")
    speed = result.add_argument_group("speed")
    speed.add_argument("--parts", type=_comma_list, help=f"of {','.join(PARTS)} (default: encoding,train; all on CUDA)")
    speed.add_argument("--backends", type=_comma_list, help="encoding backends (default: every one usable here)")
    speed.add_argument("--points", type=lambda text: [int(p) for p in _comma_list(text)],
                       help="log2 of the encoding's point counts (default 18,20)")
    speed.add_argument("--prepare", action="store_true",
                       help="only render the datasets a GPU machine's run needs (it has no Blender)")
    speed.add_argument("--from-json", action="append", metavar="FILE",
                       help="merge the rows of `python -m bench.speed_probe --json FILE` instead of running (repeatable)")
    return result


def main(argv):
    """`python3 build.py bench ARGV`: run the named benchmarks (default all, each with those it
    includes), print their tables and update docs/benchmarks.md; 1 when any part failed."""
    command = parser()
    args = command.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        command.error(f"unknown benchmark(s) {', '.join(unknown)}; known: {', '.join(BENCHMARKS)}")
    failed = []
    names = list(dict.fromkeys(n for name in args.names or list(BENCHMARKS)
                               for n in [name] + BENCHMARKS[name].get("includes", [])))
    for name in names:
        spec = BENCHMARKS[name]
        log("bench", f"running {name}")
        args.failed = []
        result = spec["run"](args)
        failed += [f"{name} {scene}" for scene in args.failed]
        new_rows = result if isinstance(result, list) else [result]
        if not new_rows:
            continue
        rows = new_rows
        if not args.no_write:
            for row in new_rows:
                rows = update_benchmarks_doc(name, row)
        print(f"\n## {spec['title']}\n\n" + markdown_table(spec["columns"], rows) + "\n", flush=True)
        if not args.no_write:
            log("bench", f"updated {os.path.relpath(BENCHMARKS_DOC, REPO)}")
    if failed:
        print(f"error: failed: {', '.join(failed)}", file=sys.stderr, flush=True)
        return 1
    return 0



"""Marble's benchmarks (`python3 build.py bench [NAMES]`): one module per benchmark, each with its
description beside it (bench/NAME.md), and one registry (bench.registry) that runs them and writes
docs/benchmarks.md.

Every module's top level is standard library only, so build.py (a bare python3) can import the
registry; what needs numpy, torch or bpy is imported inside the functions that run in the .venv
(`python -m bench.jobs`, `bench.sequence`, `bench.rigs`, `bench.meshes`, `bench.dynamic_eval`) or on
a GPU machine with its own Python (`python -m bench.speed_probe`: torch, numpy and the engine only).
Scratch data goes to demo/out/ (git-ignored), as before the benchmarks had their own folder.
"""

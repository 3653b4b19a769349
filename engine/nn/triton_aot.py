"""The Triton kernels compiled ahead of time for NVIDIA GPUs, on any machine: no GPU is needed (ptxas
ships in the triton wheel). Triton's interpreter, which the numerical tests use, checks none of the
compiler's rules; this does, for every launch the engine makes, on every architecture Marble supports.

    python -m engine.nn.triton_aot [--capability 80 86 89 90] [--preset cpu fast quality]

prints one JSON line per launch compiled in a fresh (cold) Triton cache: kernel, table type, constexprs,
capability, seconds, cubin bytes, or the error. The tests and `build.py bench compile` run it. It must
run without TRITON_INTERPRET (the interpreter replaces the kernels by Python functions): run it as a
module in its own process.
"""
import argparse
import json
import os
import sys
import tempfile
import time

# sm_80 A100/A30, sm_86 RTX 30xx/A40/A10, sm_89 RTX 40xx/L40/L4, sm_90 H100/H200.
CAPABILITIES = (80, 86, 89, 90)
# Features per level the encoding kernels take beyond the presets' (any power of two up to 8 is a
# reasonable `--set encoding.features=...`).
EXTRA_FEATURES = (1, 2, 4, 8)


# The backward's (position gradient, table gradient) variants: training (the table alone), a frame's
# training with its motion (both), the motion prediction with the network frozen (positions alone).
BACKWARD_NEEDS = ((False, True), (True, True), (True, False))


def launches(features, sdf_hidden, sdf_layers=1):
    """Every (kernel name, table type, constexprs) a configuration with `features` per level and that SDF
    network can launch: both table types (encoding.half_table on or off), the backward's BACKWARD_NEEDS
    variants and, when the network is one it serves (one hidden layer of a power-of-two width;
    engine.nn.model SDFNetwork.value), the fused SDF kernel."""
    from .hashgrid_triton import BLOCK, sdf_block
    out = []
    for table in ("fp32", "fp16"):
        out.append(("_encode_forward", table, {"F": features, "BLOCK": BLOCK}))
        for need_positions, need_table in BACKWARD_NEEDS:
            out.append(("_encode_backward", table, {"F": features, "BLOCK": BLOCK, "NEED_POSITIONS": need_positions,
                                                    "NEED_TABLE": need_table}))
        if sdf_layers == 1 and sdf_hidden & (sdf_hidden - 1) == 0:
            out.append(("_sdf_value", table, {"F": features, "HIDDEN": sdf_hidden, "BLOCK": sdf_block(sdf_hidden)}))
    return out


def engine_launches(presets=None, extra_features=EXTRA_FEATURES):
    """The distinct launches of the named presets (all by default), plus the encoding kernels for
    `extra_features`, in a stable order."""
    from ..config import PRESETS, preset
    seen, out = set(), []
    wanted = [(preset(name).encoding.features, preset(name).network.sdf_hidden, preset(name).network.sdf_layers)
              for name in (presets or PRESETS)]
    wanted += [(features, 0, 0) for features in extra_features]  # no SDF network: encoding kernels only
    for features, hidden, layers in wanted:
        for launch in launches(features, hidden, layers):
            key = json.dumps(launch, sort_keys=True)
            if key not in seen:
                seen.add(key)
                out.append(launch)
    return out


def compile_launch(kernel, table, constexprs, capability):
    """Compile one launch for compute capability `capability` (e.g. 90); returns the compiled kernel
    (its .asm holds ttir, ttgir, llir, ptx and cubin)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .hashgrid_triton import kernel_signatures
    fn, signature = kernel_signatures(table)[kernel]
    # As Triton's JIT specialises a launch on torch's allocations: every pointer 16-byte aligned.
    aligned = {(index,): [["tt.divisibility", 16]] for index, kind in enumerate(signature.values())
               if kind.startswith("*")}
    source = ASTSource(fn=fn, signature=signature, constexprs=dict(constexprs), attrs=aligned)
    return triton.compile(source, target=GPUTarget("cuda", int(capability), 32))


def compile_all(capabilities=CAPABILITIES, presets=None, emit=None):
    """Compile every engine launch for every capability, each cold (the cache is a fresh folder per
    launch); returns the rows (see the module's docstring), and hands each to `emit` as it is made."""
    if os.environ.get("TRITON_INTERPRET", "") not in ("", "0"):
        raise RuntimeError("TRITON_INTERPRET is set: the kernels are Python functions here and cannot be "
                           "compiled; run `python -m engine.nn.triton_aot` without it")
    rows = []
    with tempfile.TemporaryDirectory(prefix="marble-triton-aot-") as cache:
        for capability in capabilities:
            for number, (kernel, table, constexprs) in enumerate(engine_launches(presets)):
                # Triton reads the cache folder at each compile: a new one makes every compile cold.
                os.environ["TRITON_CACHE_DIR"] = os.path.join(cache, f"{capability}-{number}")
                row = {"kernel": kernel, "table": table, "constexprs": constexprs, "capability": capability}
                started = time.perf_counter()
                try:
                    compiled = compile_launch(kernel, table, constexprs, capability)
                except Exception as exc:  # the row says what failed; the caller decides
                    row.update(ok=False, error=f"{type(exc).__name__}: {exc}"[:4000])
                else:
                    ptx = compiled.asm.get("ptx", "")
                    row.update(ok=True, cubin_bytes=len(compiled.asm["cubin"]), ptx_target=_ptx_target(ptx),
                               num_warps=compiled.metadata.num_warps, shared_bytes=compiled.metadata.shared)
                row["seconds"] = round(time.perf_counter() - started, 3)
                rows.append(row)
                if emit is not None:
                    emit(row)
    return rows


def _ptx_target(ptx):
    for line in ptx.splitlines():
        if line.startswith(".target"):
            return line.split()[1].rstrip(",")
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m engine.nn.triton_aot", description=__doc__.split("\n\n")[0])
    parser.add_argument("--capability", type=int, nargs="+", default=list(CAPABILITIES))
    parser.add_argument("--preset", nargs="+", default=None)
    args = parser.parse_args(argv)
    rows = compile_all(args.capability, args.preset,
                       emit=lambda row: print(json.dumps(row, sort_keys=True), flush=True))
    return 0 if all(row["ok"] for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())

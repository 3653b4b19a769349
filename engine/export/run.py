"""The export of a job (`python -m engine export`, and a static job's end when export.faces > 0):
the mesh decimated, unwrapped and its colour baked into a texture, written as glTF binary, OBJ + MTL +
PNG or a vertex-coloured PLY; a dynamic job's frame likewise, or all its frames as one USD file.

Events: `stage` "export" (frame), `progress` (phase, iteration/total within it, fraction over the
export, frame), and the caller's `done` with the outputs below. Every file is written under a unique
temporary name and renamed only when all are written, so a failure or a cancel leaves none.
"""
import dataclasses
import os
import tempfile
import time

import numpy as np

from ..config import RANGES, InputError, range_problem
from ..io import protocol
from ..io.ply import PlyError, read_triangles, write_ply
from .bake import COLOR_CHUNK, bake, dilate, rasterize, unwrap
from .decimate import decimate, vertex_normals

DEFAULT_FACES = 50000
# Share of the export's time each phase roughly takes (2 cores, 50,000 faces, 2048 px): the `fraction`.
PHASE_WEIGHTS = {"extract": 3.0, "decimate": 0.5, "unwrap": 4.0, "bake": 4.0, "write": 1.0}
assert tuple(PHASE_WEIGHTS) == protocol.EXPORT_PHASES


class ExportCancelled(Exception):
    """A cancel request reached the export; nothing was written."""


@dataclasses.dataclass
class ExportOptions:
    faces: int = None              # None: DEFAULT_FACES for a mesh, every face for a USD sequence
    texture: int = 2048
    format: str = "glb"
    frame: int = None
    resolution: int = None         # a static job: extract again at this resolution
    largest_component: bool = False

    def checked(self):
        """self, or InputError naming the flag that cannot be used (before any work)."""
        if self.format not in protocol.EXPORT_FORMATS:
            raise InputError(f"--format must be one of {', '.join(protocol.EXPORT_FORMATS)}, got {self.format!r}")
        least, most = RANGES["export.faces"]
        if self.faces is not None and not max(1, least) <= self.faces <= most:
            raise InputError(f"--faces must be between 1 and {most}, got {self.faces}")
        for value, key, flag in ((self.texture, "export.texture", "--texture"),
                                 (self.resolution, "mesh.resolution", "--resolution")):
            problem = value is not None and range_problem(key, value, flag)
            if problem:
                raise InputError(problem)
        if self.frame is not None and not 0 <= self.frame <= 1048574:
            raise InputError(f"--frame must be between 0 and 1048574, got {self.frame}")
        return self


def job_is_dynamic(job):
    """Whether the job's events say it trains a dynamic rig."""
    path = os.path.join(job, protocol.EVENTS_FILE)
    events = protocol.read_events(path) if os.path.isfile(path) else []
    return any(e["event"] == protocol.STARTED and e.get("dynamic") for e in events)


class Progress:
    """`progress` events of the export: phase, iteration/total within it, fraction over all phases
    (weighted by PHASE_WEIGHTS), at most a few a second."""

    def __init__(self, out, phases, frame=None):
        self.out, self.frame = out, frame
        weights = [PHASE_WEIGHTS[p] for p in phases]
        total = sum(weights)
        self.start = {p: sum(weights[:i]) / total for i, p in enumerate(phases)}
        self.share = {p: w / total for p, w in zip(phases, weights)}
        self.last = 0.0

    def __call__(self, phase, done, total):
        now = time.monotonic()
        if now - self.last < 0.25 and 0 < done < total:
            return
        self.last = now
        fraction = self.start[phase] + self.share[phase] * done / max(total, 1)
        self.out.emit(protocol.PROGRESS, phase=phase, iteration=int(done), total=int(total),
                      fraction=round(min(1.0, fraction), 4), frame=self.frame)


class Staged:
    """Output files written under unique temporary names beside their final ones; commit() renames them
    all (in the order written), discard() removes them."""

    def __init__(self):
        self.pending = []

    def path(self, final):
        folder, name = os.path.split(os.path.abspath(final))
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        os.close(fd)
        os.chmod(tmp, protocol.FILE_MODE)
        self.pending.append((tmp, final))
        return tmp

    def write(self, final, data):
        with open(self.path(final), "wb") as f:
            f.write(data.encode("utf-8") if isinstance(data, str) else data)

    def commit(self):
        for tmp, final in self.pending:
            os.replace(tmp, final)
        self.pending = []

    def discard(self):
        for tmp, _ in self.pending:
            if os.path.exists(tmp):
                os.remove(tmp)
        self.pending = []


def png_bytes(texture):
    """The texture (h, w, 3) float 0-1 as PNG bytes (8-bit sRGB values, as the network learnt them)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.clip(texture * 255.0 + 0.5, 0, 255).astype(np.uint8), "RGB").save(buffer, "PNG",
                                                                                         compress_level=6)
    return buffer.getvalue()


def export_mesh(vertices, faces, color_fn, options, stem, progress, check, frame=None):
    """Decimate, (largest component,) unwrap, bake and write one mesh (world coordinates) to `stem` +
    the format's extension(s); returns the done outputs. `color_fn(points, normals)` gives colours."""
    progress("decimate", 0, 1)
    vertices, faces = decimate(vertices, faces, options.faces or DEFAULT_FACES)
    if options.largest_component and len(faces):
        from ..extract import largest_component
        vertices, faces = largest_component(vertices, faces)
    if len(faces) == 0:
        raise InputError(f"{stem}: the mesh has no faces left to export")
    check()
    progress("decimate", 1, 1)
    normals = vertex_normals(vertices, faces)
    staged, texture_path = Staged(), None
    try:
        if options.format == "ply":
            colors = np.zeros((len(vertices), 3))
            for begin in range(0, len(vertices), COLOR_CHUNK):
                check()
                end = begin + COLOR_CHUNK
                colors[begin:end] = color_fn(vertices[begin:end], normals[begin:end])
                progress("bake", min(end, len(vertices)), len(vertices))
            progress("write", 0, 1)
            path = stem + ".ply"
            write_ply(staged.path(path), vertices, faces, np.clip(colors, 0.0, 1.0))
        else:
            size = options.texture
            progress("unwrap", 0, 1)
            vertex_of, uv_faces, uvs = unwrap(vertices, faces, size)
            check()
            progress("unwrap", 1, 1)
            face_of, weights = rasterize(uvs, uv_faces, size, check=check)
            image, covered = bake(vertices[vertex_of], normals[vertex_of], uv_faces, face_of, weights, color_fn,
                                  check=check, progress=lambda done, total: progress("bake", done, total))
            progress("write", 0, 1)
            png = png_bytes(dilate(image, covered))
            check()
            texture_path = stem + ".png"
            if options.format == "glb":
                from .gltf import glb_bytes
                path, texture_path = stem + ".glb", None
                staged.write(path, glb_bytes(vertices[vertex_of], normals[vertex_of], uvs, uv_faces, png))
            else:
                from .obj import mtl_text, obj_text
                path = stem + ".obj"
                name = os.path.basename(stem)
                staged.write(texture_path, png)  # the PNG first, then what refers to it
                staged.write(stem + ".mtl", mtl_text(name + ".png"))
                staged.write(path, obj_text(vertices, normals, vertex_of[uv_faces], uvs, uv_faces, name + ".mtl"))
        check()
        staged.commit()
    finally:
        staged.discard()
    progress("write", 1, 1)
    return {"export": path, "format": options.format, "vertices": int(len(vertices)), "faces": int(len(faces)),
            "texture": texture_path, "frame": frame}


def network_colors(trainer):
    """color_fn of a trained static job: the colour network at each point (world coordinates) with
    the SDF normal as the normal and its opposite as the viewing direction (Trainer.vertex_colors)."""
    normalization = trainer.data.normalization
    trainer.model.sdf.grid.set_active_levels(trainer.cfg.encoding.levels)

    def colors(points, normals):
        return trainer.vertex_colors(normalization.to_normalized(points).astype(np.float32))
    return colors


def export_static(trainer, out, options, check, reuse=True):
    """Export a loaded static job (a Trainer with its checkpoint; options without --frame or usd, which
    the CLI refuses first): JOB/meshes/mesh.ply when it exists and `reuse` (no new resolution or largest
    component asked), else a fresh extraction."""
    meshes = os.path.join(trainer.job_dir, protocol.MESHES_DIR)
    dense = os.path.join(meshes, protocol.STATIC_MESH_FILE)
    extract = not (reuse and os.path.isfile(dense) and options.resolution is None and not options.largest_component)
    phases = (("extract",) if extract else ()) + (("decimate", "bake", "write") if options.format == "ply"
                                                   else ("decimate", "unwrap", "bake", "write"))
    out.emit(protocol.STAGE, name="export", frame=None)
    progress = Progress(out, phases)
    if extract:
        progress("extract", 0, 1)
        resolution = options.resolution or trainer.cfg.mesh.resolution
        out.log(f"export: extracting the surface at resolution {resolution}")
        vertices, faces, _ = trainer.mesh(resolution, check=check, colors=False)
        progress("extract", 1, 1)
    else:
        try:
            vertices, faces, _ = read_triangles(dense)
        except PlyError as exc:
            raise InputError(f"{exc} (extract the job again: python -m engine extract JOB)") from None
    if len(faces) == 0:
        raise InputError(f"{trainer.job_dir}: the job's surface is empty; nothing to export")
    out.log(f"export: {len(faces)} faces -> about {options.faces or DEFAULT_FACES}, {options.format}"
            + ("" if options.format == "ply" else f", {options.texture} px texture"))
    outputs = export_mesh(vertices, faces, network_colors(trainer), options,
                          os.path.join(meshes, protocol.TEXTURED_MESH_STEM), progress, check)
    out.log(f"export: wrote {outputs['export']} ({outputs['vertices']} vertices, {outputs['faces']} faces)")
    return outputs


def export_trained(trainer):
    """The export at the end of a static job's training (cfg.export.faces > 0), from the mesh just
    written; a cancel saves a checkpoint and ends the job as training's does."""
    e = trainer.cfg.export
    options = ExportOptions(faces=e.faces, texture=e.texture, format=e.format)
    return export_static(trainer, trainer.out, options, trainer.stop_if_cancelled)


def export_dynamic(job, out, options, check):
    """Export a dynamic job: one frame (--frame, from its dense mesh's colours) or, with --format usd,
    the whole sequence as one USD file. The job folder is locked and its events log appended."""
    from ..io.sequence import SequenceError, read_sequence, sequence_path
    from ..jobdir import JobLock
    if options.resolution is not None:
        raise InputError(f"{job}: --resolution re-extracts a static job; a dynamic job's frames are exported as "
                         f"they were extracted")
    if options.format == "usd" and options.frame is not None:
        raise InputError(f"{job}: --format usd exports every frame of the sequence; leave out --frame (or "
                         f"choose glb, obj or ply for one frame)")
    if options.format != "usd" and options.frame is None:
        raise InputError(f"{job}: a dynamic job: give --frame F to export one frame's mesh, or --format usd for "
                         f"the whole sequence")
    path = sequence_path(job)
    try:
        sequence = read_sequence(path)
    except (SequenceError, OSError) as exc:
        raise InputError(f"{path}: {exc}" if path not in str(exc) else str(exc)) from None
    JobLock(job).acquire()  # held until the process ends
    out.attach(job)
    meshes = os.path.join(job, protocol.MESHES_DIR)
    if options.format == "usd":
        return export_usd(path, os.path.join(meshes, protocol.USD_SEQUENCE_FILE), out, options, check)
    entry = next((e for e in sequence.frames if e.frame == options.frame), None)
    if entry is None:
        frames = [e.frame for e in sequence.frames]
        raise InputError(f"{path}: no frame {options.frame} in the sequence (it holds {len(frames)} frames, "
                         f"{frames[0]} to {frames[-1]})" if frames else f"{path}: the sequence holds no frames")
    try:
        vertices, faces, colors = read_triangles(entry.mesh)
    except PlyError as exc:
        raise InputError(str(exc)) from None
    if colors is None:
        raise InputError(f"{entry.mesh}: the frame's mesh has no vertex colours to bake")
    from .transfer import DenseColors
    phases = ("decimate", "bake", "write") if options.format == "ply" else ("decimate", "unwrap", "bake", "write")
    out.emit(protocol.STAGE, name="export", frame=entry.frame)
    out.log(f"export: frame {entry.frame}, {len(faces)} faces -> about {options.faces or DEFAULT_FACES}, "
            f"{options.format}")
    outputs = export_mesh(vertices, faces, DenseColors(vertices, faces, colors), options,
                          os.path.join(meshes, protocol.FRAME_TEXTURED_STEM.format(entry.frame)),
                          Progress(out, phases, frame=entry.frame), check, frame=entry.frame)
    out.log(f"export: wrote {outputs['export']} ({outputs['vertices']} vertices, {outputs['faces']} faces)")
    return outputs


def export_usd(sequence, usd_path, out, options, check):
    """Every frame of the sequence in one USD file (engine.export.usd), decimated to --faces when given."""
    try:
        from .usd import write_usd_sequence
    except ImportError as exc:
        if exc.name not in (None, __package__ + ".usd"):
            raise  # a package it needs (usd-core's pxr): reported as a missing package
        raise RuntimeError("this engine cannot write USD sequences (engine/export/usd.py is missing)") from None
    from ..io.sequence import SequenceError
    out.emit(protocol.STAGE, name="export", frame=None)
    progress = Progress(out, ("write",))
    progress("write", 0, 1)
    try:
        result = write_usd_sequence(sequence, usd_path, progress=lambda i, n: progress("write", i, n), check=check,
                                    faces=options.faces or 0)
    except SequenceError as exc:
        raise InputError(str(exc)) from None
    out.log(f"export: wrote {usd_path} ({result['frames']} frames)")
    return {"export": usd_path, "format": "usd", "frames": int(result["frames"])}

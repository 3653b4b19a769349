"""Training configurations: plain dataclasses, the named presets, and every field's choices and
range (docs/design.md, "Config").

The one source of the configuration: the command line's flags and `--set` checks, and the add-on's
preset, device and resolution settings, are all derived from the names below, so they cannot
disagree. Standard library only: Blender's Python and a Python without torch import it.

A preset is a Config; command-line flags override single fields; the resolved Config is written to
the job's config.json and sent in the `started` event.
"""
import dataclasses
import math
from dataclasses import dataclass, field

# name: (label, description) -- the command line's choices and the add-on's enum items.
PRESETS = {
    "cpu": ("CPU", "Small model sized for a laptop processor"),
    "fast": ("Fast", "NeuS2-style: progressive hash-grid levels, about 15k iterations on a GPU"),
    "quality": ("Quality", "Neuralangelo-style: numerical gradients and curvature loss, slow"),
}
DEVICES = {
    "auto": ("Auto", "CUDA when the engine's Python sees a GPU, else the CPU"),
    "cpu": ("CPU", "Train on the processor"),
    "cuda": ("CUDA", "Train on an NVIDIA GPU"),
}
BACKENDS = {
    "auto": ("Auto", "tiny-cuda-nn, then Triton on CUDA, Numba on the CPU, else torch: the first that runs here"),
    "tcnn": ("tiny-cuda-nn", "tiny-cuda-nn's fused CUDA encoding, when it imports"),
    "triton": ("Triton", "Marble's fused Triton kernels, on CUDA GPUs"),
    "numba": ("Numba", "Marble's compiled CPU kernels (Numba), about 10x the torch encoding's speed"),
    "torch": ("torch", "The reference implementation; runs everywhere"),
}
# What `train --export-format` can write at the end of a static job (`python -m engine export` also
# writes a dynamic job's USD: engine.io.protocol.EXPORT_FORMATS).
EXPORT_FORMATS = ("glb", "obj", "ply")
SECTIONS = ("encoding", "network", "render", "train", "mesh", "data", "dynamic", "export")
CHOICES = {"render.sampler": ("occupancy", "hierarchical"), "render.background_model": ("auto", "none"),
           "train.color_loss": ("l1", "huber"), "train.gradient": ("numerical", "analytic"),
           "train.taps": ("6", "4"), "train.weight_decay_on": ("grid", "all"),
           "train.mixed_precision": ("auto", "off", "bf16", "fp16"), "dynamic.coordinates": ("world", "canonical"),
           "encoding.half_table": ("auto", "on", "off"), "network.appearance": ("auto", "on", "off"),
           "export.format": EXPORT_FORMATS}
# "section.field": (least, most), both included; None: unbounded. Every number of the configuration
# has one (tests/engine/test_config.py checks), checked by validate() and used by the CLI and the add-on.
# The bounds keep a job inside what the engine can run: memory (samples, rays, table size, grid
# resolutions), the kernels (features per level), and numbers that mean something (weights >= 0).
RANGES = {
    "encoding.levels": (1, 32), "encoding.features": (1, 8), "encoding.log2_table": (4, 26),
    "encoding.base_resolution": (1, 4096), "encoding.finest_resolution": (1, 65536),
    "network.sdf_hidden": (1, 1024), "network.sdf_layers": (1, 8), "network.geo_features": (1, 256),
    "network.color_hidden": (1, 1024), "network.color_layers": (1, 8), "network.init_radius": (0.0, 1.0),
    "network.appearance_dim": (1, 64),
    "render.samples_per_ray": (1, 4096), "render.fine_samples": (0, 1024), "render.up_sample_rounds": (1, 16),
    "render.occupancy_resolution": (8, 512), "render.occupancy_update_every": (1, None),
    "render.init_inv_s": (0.0, 1e6), "render.cos_anneal_iters": (0, None), "render.background": (0.0, 1.0),
    "render.background_samples": (1, 1024), "render.early_stop": (0.0, 1.0), "render.skip_alpha": (0.0, 1.0),
    "train.iterations": (1, 10 ** 8), "train.rays_per_batch": (1, 2 ** 20), "train.target_samples": (0, 2 ** 24),
    "train.max_rays": (0, 2 ** 22), "train.lr": (0.0, 1.0), "train.lr_variance": (0.0, 1.0),
    "train.warmup_iters": (0, None), "train.final_lr_factor": (0.0, 1.0), "train.eikonal_weight": (0.0, 1e3),
    "train.mask_weight": (0.0, 1e3), "train.curvature_weight": (0.0, 1e3), "train.color_weight": (0.0, 1e3),
    "train.start_levels": (1, 32),
    "train.level_every": (1, None), "train.grid_weight_decay": (0.0, 1.0), "train.checkpoint_every": (0, None),
    "train.preview_every": (0, None), "train.seed": (0, 2 ** 63 - 1),
    "mesh.resolution": (8, 2048), "mesh.block": (8, 1024),
    "data.downscale": (1, 64), "data.holdout_every": (0, None),
    "dynamic.frame_iterations": (1, None), "dynamic.frame_lr_factor": (0.0, 1.0),
    "dynamic.prediction_iterations": (0, None), "dynamic.prediction_lr": (0.0, 1.0),
    "dynamic.prediction_mask_weight": (0.0, 1e3),
    "export.faces": (0, 10 ** 7), "export.texture": (16, 8192),
}
# Above their least, not at it (a zero learning rate or scale means nothing).
POSITIVE = ("network.init_radius", "render.init_inv_s", "train.lr", "train.final_lr_factor",
            "dynamic.frame_lr_factor", "dynamic.prediction_lr")


def range_problem(key, value, name=None):
    """The InputError message for `value` outside RANGES[key] (named `name`, default `key`), or None."""
    least, most = RANGES[key]
    name = name or key
    if isinstance(value, float) and not math.isfinite(value):
        return f"{name} must be a finite number, got {value}"
    allowed = (f"between {least} and {most}" if most is not None else f"at least {least}")
    if key in POSITIVE and value <= least:
        return f"{name} must be positive" + (f" and at most {most}" if most is not None else "") + f", got {value}"
    if value < least or (most is not None and value > most):
        return f"{name} must be {allowed}, got {value}"
    return None


class InputError(ValueError):
    """A command-line value or option the engine cannot use; the message says which and why."""


@dataclass
class HashGridConfig:
    levels: int = 16
    features: int = 2
    log2_table: int = 19
    base_resolution: int = 16
    finest_resolution: int = 2048
    half_table: str = "auto"       # lookups from a float16 copy of the tables: auto (on with triton on a GPU) | on | off


@dataclass
class NetworkConfig:
    sdf_hidden: int = 64
    sdf_layers: int = 1            # hidden layers of the SDF MLP
    geo_features: int = 15         # SDF MLP outputs passed on to the colour MLP
    color_hidden: int = 64
    color_layers: int = 2
    init_radius: float = 0.5       # geometric initialisation: a sphere of this radius
    appearance: str = "auto"       # per-image appearance embedding fed to the colour MLP only (Neuralangelo):
                                   # auto (on when the job trains without masks) | on | off; static jobs only
    appearance_dim: int = 8        # numbers per training image in the embedding


@dataclass
class RenderConfig:
    sampler: str = "occupancy"     # occupancy (NeuS2's grid) | hierarchical (NeuS's up-sampling)
    samples_per_ray: int = 128     # occupancy: fixed steps along each ray's chord; hierarchical: coarse samples
    fine_samples: int = 64         # hierarchical: importance samples per ray ...
    up_sample_rounds: int = 4      # ... drawn in this many rounds, at sharpness 64 * 2^round
    occupancy_resolution: int = 64 # empty-space grid over [-1, 1]^3
    occupancy_update_every: int = 16
    init_inv_s: float = 20.0       # NeuS: initial inverse standard deviation of the logistic density
    cos_anneal_iters: int = 200
    background: float = 0.0        # grey level masked images are composited on
    background_model: str = "auto" # auto: a background NeRF outside the sphere when images have no masks; none
    background_samples: int = 32
    early_stop: float = 0.0        # occupancy: a ray's samples end where its transmittance (estimated from
                                   # the SDF alone) falls below this; 0: every occupied sample is evaluated
    skip_alpha: float = 0.0        # occupancy: also skip samples whose estimated opacity is below this; 0: none


@dataclass
class TrainConfig:
    iterations: int = 15000
    rays_per_batch: int = 512
    target_samples: int = 0        # > 0: adapt the rays per step so each step evaluates about this many
                                   # samples (from rays_per_batch on); 0: rays_per_batch rays every step
    max_rays: int = 0              # the adaptive batch's most rays; 0: 8 x rays_per_batch
    lr: float = 1e-2
    lr_variance: float = 1e-3
    warmup_iters: int = 50
    final_lr_factor: float = 0.1
    color_weight: float = 1.0      # the colour loss's weight (Neuralangelo: 3, its L1 summed over R, G and B)
    eikonal_weight: float = 0.1
    mask_weight: float = 0.1
    curvature_weight: float = 0.0
    color_loss: str = "l1"         # l1 | huber
    gradient: str = "numerical"    # numerical (Neuralangelo central differences) | analytic
    taps: str = "6"                # numerical: 6 axis taps (7 SDF evaluations a sample) | 4 tetrahedral taps (5)
    start_levels: int = 4          # progressive levels: active at step 0
    level_every: int = 100         # one more level every this many steps
    grid_weight_decay: float = 0.0 # AdamW weight decay (Neuralangelo: 1e-2) ...
    weight_decay_on: str = "grid"  # ... on the hash tables alone | on all parameters (Neuralangelo's code)
    mixed_precision: str = "auto"  # auto (bf16/fp16 on CUDA, off on the CPU) | off | bf16 | fp16
    checkpoint_every: int = 500
    preview_every: int = 0         # 0: no preview meshes
    seed: int = 0


@dataclass
class MeshConfig:
    resolution: int = 256
    block: int = 128               # marching cubes block edge (bounded memory)
    largest_component: bool = False  # keep only the largest connected piece (drops floaters)


@dataclass
class DataConfig:
    downscale: int = 1             # train on images 1/downscale the size (area averaged)
    holdout_every: int = 0         # hold out every Nth view (index % N == 0) for evaluation; 0: none
    use_masks: bool = True         # False: ignore alpha channels and mask files (the background model is used)


@dataclass
class DynamicConfig:
    """Dynamic rigs (NeuS2): frame one trains for train.iterations; each later frame starts from the
    previous frame's weights, predicts its global rigid motion with the network frozen, then trains
    for frame_iterations steps."""
    frame_iterations: int = 300        # training steps of every frame after the first
    frame_lr_factor: float = 0.3       # later frames' learning rate starts at this fraction of train.lr ...
                                       # ... and decays to train.final_lr_factor by the frame's end
    predict_transform: bool = True     # global transformation prediction (off: the network absorbs the motion)
    prediction_iterations: int = 100   # most optimiser steps of the rigid transform per frame (it stops
                                       # earlier once converged)
    prediction_lr: float = 1e-2        # Adam on the axis-angle rotation (radians) and translation (region radii)
    prediction_mask_weight: float = 1.0  # silhouette term of the prediction loss (colour: 1)
    frames: str = ""                   # "A:B" (inclusive, either end may be left out), "A", or "": all frames
    coordinates: str = "world"         # world: each frame's mesh where the object is; canonical: in frame one's place


@dataclass
class ExportConfig:
    """The textured mesh written when a static job ends (`python -m engine export` does the same later)."""
    faces: int = 0                 # decimate to about this many faces; 0: no export at the end of training
    texture: int = 2048            # the baked colour texture's edge in pixels (glb, obj)
    format: str = "glb"            # glb (glTF binary, texture inside) | obj (+ .mtl + .png) | ply (vertex colours)


@dataclass
class Config:
    preset: str = "cpu"
    encoding: HashGridConfig = field(default_factory=HashGridConfig)
    network: NetworkConfig = field(default_factory=NetworkConfig)
    render: RenderConfig = field(default_factory=RenderConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    data: DataConfig = field(default_factory=DataConfig)
    dynamic: DynamicConfig = field(default_factory=DynamicConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    device: str = "auto"
    backend: str = "auto"          # hash-grid encoding: auto (tcnn, then triton on CUDA, numba on the CPU, else torch)
                                   # | tcnn | triton | numba | torch

    def to_dict(self):
        return dataclasses.asdict(self)

    def set(self, assignment):
        """Apply one 'section.field=value' override (the CLI's --set), converting the value to the
        field's type; unknown names and bad values raise InputError naming them."""
        key, sep, text = assignment.partition("=")
        section_name, _, field_name = key.strip().partition(".")
        section = getattr(self, section_name, None) if section_name in SECTIONS else None
        fields = {f.name: f for f in dataclasses.fields(section)} if section is not None else {}
        if not sep or field_name not in fields:
            names = ", ".join(f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(getattr(self, s)))
            raise InputError(f"--set {assignment!r}: expected SECTION.FIELD=VALUE with one of {names}")
        kind = type(getattr(section, field_name))
        text = text.strip()
        try:
            if kind is bool:
                if text.lower() not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                    raise ValueError(text)
                value = text.lower() in ("true", "1", "yes", "on")
            else:
                value = kind(text)
        except ValueError:
            raise InputError(f"--set {assignment!r}: {key.strip()} takes a {kind.__name__}, got {text!r}") from None
        setattr(section, field_name, value)
        self.validate()

    def validate(self):
        """Raise InputError for a field outside its choices or range."""
        if self.backend not in BACKENDS:
            raise InputError(f"backend must be one of {', '.join(BACKENDS)}, got {self.backend!r}")
        for key, allowed in CHOICES.items():
            section, name = key.split(".")
            value = getattr(getattr(self, section), name)
            if value not in allowed:
                raise InputError(f"{key} must be one of {', '.join(allowed)}, got {value!r}")
        for key in RANGES:
            section, name = key.split(".")
            problem = range_problem(key, getattr(getattr(self, section), name))
            if problem:
                raise InputError(problem)
        if self.encoding.finest_resolution < self.encoding.base_resolution:
            raise InputError(f"encoding.finest_resolution ({self.encoding.finest_resolution}) must be at least "
                             f"encoding.base_resolution ({self.encoding.base_resolution})")
        if self.dynamic.frames:
            parse_frames(self.dynamic.frames)

    @classmethod
    def from_dict(cls, data):
        return cls(preset=data["preset"], device=data.get("device", "auto"), backend=data.get("backend", "auto"),
                   encoding=HashGridConfig(**data["encoding"]), network=NetworkConfig(**data["network"]),
                   render=RenderConfig(**data["render"]), train=TrainConfig(**data["train"]),
                   mesh=MeshConfig(**data["mesh"]), data=DataConfig(**data.get("data", {})),
                   dynamic=DynamicConfig(**data.get("dynamic", {})), export=ExportConfig(**data.get("export", {})))


# Each preset's fields that differ from the dataclasses' defaults, section by section.
PRESET_FIELDS = {
    "cpu": {
        "encoding": dict(levels=10, features=2, log2_table=15, base_resolution=16, finest_resolution=256),
        "network": dict(sdf_hidden=64, sdf_layers=1, color_hidden=64, color_layers=2),
        "render": dict(samples_per_ray=128, occupancy_resolution=64, early_stop=1e-3),
        "train": dict(iterations=1000, rays_per_batch=512, start_levels=4, level_every=50),
        "mesh": dict(resolution=256),
        "dynamic": dict(frame_iterations=300, prediction_iterations=200)},
    "fast": {  # NeuS2
        "encoding": dict(levels=14, features=2, log2_table=19, base_resolution=16, finest_resolution=2048),
        "network": dict(sdf_hidden=64, sdf_layers=1, color_hidden=64, color_layers=2),
        "render": dict(samples_per_ray=512, occupancy_resolution=128, early_stop=1e-3),
        "train": dict(iterations=15000, rays_per_batch=4096, target_samples=2 ** 18, start_levels=4, level_every=50),
        "mesh": dict(resolution=512),
        "dynamic": dict(frame_iterations=2000, prediction_iterations=300)},
    "quality": {  # Neuralangelo
        "encoding": dict(levels=16, features=8, log2_table=22, base_resolution=32, finest_resolution=2048),
        "network": dict(sdf_hidden=256, sdf_layers=1, color_hidden=256, color_layers=4),
        "render": dict(samples_per_ray=1024, occupancy_resolution=128, early_stop=1e-3),
        "train": dict(iterations=100000, rays_per_batch=4096, target_samples=2 ** 18, start_levels=4,
                      level_every=5000, curvature_weight=5e-4, color_weight=3.0, grid_weight_decay=1e-2),
        "mesh": dict(resolution=1024),
        "dynamic": dict(frame_iterations=5000, prediction_iterations=500)},
}
assert tuple(PRESET_FIELDS) == tuple(PRESETS)


def preset(name):
    """The named preset's Config: 'fast' (NeuS2), 'quality' (Neuralangelo), 'cpu' (a laptop core)."""
    if name not in PRESET_FIELDS:
        raise InputError(f"unknown preset {name!r}: choose {', '.join(PRESETS)}")
    kinds = {f.name: f.default_factory for f in dataclasses.fields(Config) if f.name in SECTIONS}
    return Config(preset=name, **{section: kinds[section](**values)
                                  for section, values in PRESET_FIELDS[name].items()})


def parse_frames(text):
    """`--frames` / dynamic.frames: "A:B" (both inclusive), "A:" (from A), ":B" (up to B), "A" (one
    frame) -> (first, last) with None for an open end; InputError otherwise."""
    first, sep, last = str(text).strip().partition(":")
    try:
        bounds = (int(first) if first.strip() else None,
                  (int(last) if last.strip() else None) if sep else int(first))
    except ValueError:
        raise InputError(f"--frames {text!r}: expected A:B (inclusive), A:, :B or A, with integer frames") from None
    if bounds[0] is not None and bounds[1] is not None and bounds[1] < bounds[0]:
        raise InputError(f"--frames {text!r}: the last frame comes before the first")
    return bounds

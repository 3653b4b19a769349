"""One training job's set-up, resolved once before it starts: the device, the encoding backend, the
frames of a dynamic rig, the region, the views and whether the colour network has an appearance
embedding. The `started` event and the trainers read it; no trainer resolves any of these again.
"""
import math
import os
from dataclasses import dataclass

import numpy as np

from .config import InputError, parse_frames
from .data import Normalization, image_has_alpha
from .io import protocol
from .inputs import check_cameras, check_image_sizes, check_region
from .io.rig import RigError
from .jobdir import read_normalization


def resolve_device(name):
    """"auto" -> cuda when this torch sees a GPU, else cpu; "cuda" without a GPU is an InputError."""
    import torch
    if name in ("auto", None):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for, but this Python's torch sees no CUDA GPU "
                         f"(torch {torch.__version__}); use --device cpu")
    return name


def select_frames(rig, spec):
    """The rig's frame numbers within `spec` (dynamic.frames / --frames), sorted; InputError when none."""
    first, last = parse_frames(spec) if spec else (None, None)
    frames = [f for f in rig.frames if (first is None or f >= first) and (last is None or f <= last)]
    if not frames:
        raise InputError(f"--frames {spec}: the rig {rig.path} has no frame in that range "
                         f"(its frames: {rig.frames[0]} to {rig.frames[-1]})")
    return frames


def resolve_appearance(cfg, views, dynamic):
    """network.appearance as on (True) or off: "on" and "off" as asked; "auto" on when the job trains
    without masks (data.use_masks off, or no view has a mask file or an alpha channel: a real capture
    whose exposure and white balance change from photograph to photograph). Dynamic jobs: off, whatever
    was asked (the embedding has a row per training image, and every frame of a sequence trains other
    images; the engine does not tie rows to physical cameras)."""
    if dynamic:
        return False
    if cfg.network.appearance != "auto":
        return cfg.network.appearance == "on"
    if not cfg.data.use_masks:
        return True
    return not any(v.mask_path or image_has_alpha(v.image_path) for v in views)


@dataclass
class Session:
    cfg: object              # engine.config.Config (cfg.backend becomes the backend really used)
    rig: object              # engine.io.rig.Rig
    job_dir: str
    device: str              # cpu | cuda
    backend: str             # the encoding backend asked for, then (check_backend) the one that runs
    half_table: bool = False
    frames: list = None      # a dynamic rig's frames to train; None: a static job
    region: tuple = None     # --region (x, y, z, radius) in world units, or None
    all_views: tuple = ()    # every view of the rig, whatever the trainers later keep
    appearance: bool = False # the colour network's per-image appearance embedding (resolve_appearance)
    ranks: object = None     # this process's place under torchrun (engine.train.ranks.Ranks); None: alone

    @classmethod
    def open(cls, cfg, rig, job_dir, region=None):
        """Resolve what can be checked before the job folder exists: InputError for a bad region, bad
        frames, a device or backend this Python cannot use."""
        if region is not None:
            region = tuple(float(v) for v in region)
            if not (len(region) == 4 and all(map(math.isfinite, region)) and region[3] > 0):
                raise InputError(f"--region needs a centre and a positive radius, got {list(region)}")
        frames = None
        if rig.is_dynamic:
            frames = select_frames(rig, cfg.dynamic.frames)
        elif cfg.dynamic.frames:
            raise InputError(f"--frames {cfg.dynamic.frames}: {rig.path} is not a dynamic rig (it has one frame)")
        first = [v for v in rig.views if v.frame == rig.views[0].frame] if rig.views else []
        check_cameras(first, rig.path)
        check_image_sizes(rig.views, cfg.data.downscale, rig.path)
        if region is not None:
            check_region(first, region[:3], region[3], "--region")
        device = resolve_device(cfg.device)
        from .nn.backends import resolve_backend
        resolve_backend(cfg.backend, device, cfg.encoding.features)  # a bad choice fails before the job exists
        return cls(cfg, rig, job_dir, device, cfg.backend, frames=frames, region=region, all_views=tuple(rig.views),
                   appearance=resolve_appearance(cfg, first, frames is not None))

    @classmethod
    def checked(cls, cfg, rig, job_dir, warn, region=None):
        """open() then check_backend(warn): for a job folder that exists (extract, evaluate, scripts)."""
        session = cls.open(cfg, rig, job_dir, region=region)
        session.check_backend(warn)
        return session

    @property
    def dynamic(self):
        return self.frames is not None

    def check_backend(self, warn):
        """Run the backend's kernels once (engine.nn.backends.checked_backend); one that fails gives way
        to torch with a warning. Sets backend, half_table and cfg.backend to what the job runs."""
        from .nn.backends import checked_backend
        self.backend, self.half_table = checked_backend(self.backend, self.device, self.cfg.encoding,
                                                        self.cfg.network.sdf_hidden, warn)
        self.cfg.backend = self.backend

    def started_fields(self):
        """The `started` event's fields."""
        fields = dict(config=self.cfg.to_dict(), device=self.device, backend=self.backend, half_table=self.half_table,
                      job=os.path.abspath(self.job_dir), data=self.rig.path, views=len(self.all_views),
                      appearance=self.appearance)
        if self.dynamic:
            fields.update(dynamic=True, frames=list(self.frames), coordinates=self.cfg.dynamic.coordinates)
        return fields

    def normalization(self):
        """The region as a Normalization: the job's own on resume, else --region, else the rig's; None:
        estimate it from the images (engine.data.RayDataset)."""
        saved = os.path.join(self.job_dir, protocol.NORMALIZATION_FILE)
        if os.path.exists(saved):
            center, radius = read_normalization(saved)
            return Normalization(np.asarray(center), radius)
        if self.region is not None:
            return Normalization(np.asarray(self.region[:3], dtype=float), self.region[3])
        if self.rig.normalization is not None:
            return Normalization.from_matrix(self.rig.normalization)
        return None

    def views(self, out, frame=None):
        """(training views, held-out views) of the static job, or of `frame` of a dynamic one. NeRF
        splits train on 'train' and hold out 'test' (or the other splits); data.holdout_every N holds out
        every Nth view; a static job on a multi-frame rig trains its first frame."""
        views = list(self.all_views) if frame is None else [v for v in self.all_views if v.frame == frame]
        held_out = []
        if any(v.split == "train" for v in views):
            others = [v for v in views if v.split != "train"]
            held_out = [v for v in others if v.split == "test"] or others
            views = [v for v in views if v.split == "train"]
            out.log(f"training on the {len(views)} 'train' views; {len(others)} held out")
        frames = sorted({v.frame for v in views})
        if len(frames) > 1:
            views = [v for v in views if v.frame == frames[0]]
            out.warn(f"the rig has {len(frames)} frames; this static job trains frame {frames[0]} "
                     f"({len(views)} views)")
        every = self.cfg.data.holdout_every
        if every:
            held_out += [v for i, v in enumerate(views) if i % every == 0]
            views = [v for i, v in enumerate(views) if i % every != 0]
            out.log(f"holding out every {every}th view for evaluation")
        if not views:
            raise RigError(f"{self.rig.path}: no views left to train on after holding out views")
        return views, held_out

"""`python -m engine`: train a job (from a rig, or from photographs it calibrates first); calibrate
photographs into a dataset; re-extract, export, evaluate or redraw the curves of a job; print a preset;
doctor.

Only the standard library is imported up front (engine.config is plain data): `doctor` must run in a
Python without torch or numpy, and `train` there must still print an error event saying what is missing.
The flags' choices and ranges come from engine.config.
"""
import argparse
import errno
import os
import re
import sys
import traceback

from .config import BACKENDS, DEVICES, PRESETS, RANGES, InputError, range_problem
from .events import CancelWatch, Emitter, emitter_for
from .io import protocol
from .threads import choose_threads, configure_openmp


class UsageError(Exception):
    """A command line argparse cannot parse: reported as an error event (exit 2), not usage text alone."""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse takes "-1e-05" for an option (its negative-number pattern has no exponent), so
        # `--region -1e-05 0 0 1` would fail: accept every float spelling as a number.
        self._negative_number_matcher = NEGATIVE_NUMBER

    def error(self, message):
        raise UsageError(f"{self.prog}: {message}")


NEGATIVE_NUMBER = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$|^-(inf|nan)$", re.IGNORECASE)


def parse_args(argv):
    from .export.command import add_export_parser, add_train_flags
    presets = tuple(PRESETS)
    parser = Parser(prog="python -m engine", description="Marble's reconstruction engine.")
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train on a rig and write the job's mesh")
    train.add_argument("--data", required=True,
                       help="the rig: transforms.json, a COLMAP model, cameras_sphere.npz, or a folder holding one")
    train.add_argument("--out", required=True, help="job directory (created)")
    train.add_argument("--preset", choices=presets, default="cpu")
    train.add_argument("--iterations", type=int, help="training steps (default: the preset's)")
    train.add_argument("--device", choices=tuple(DEVICES), default="auto")
    train.add_argument("--backend", choices=tuple(BACKENDS), default=None,
                       help="hash-grid encoding: tcnn (tiny-cuda-nn, when it imports), triton (fused kernels "
                            "on CUDA), torch (everywhere); auto takes the first that runs here")
    train.add_argument("--resolution", type=int, help="marching cubes resolution, %d to %d (default: the preset's)"
                       % RANGES["mesh.resolution"])
    train.add_argument("--preview-every", type=int, help="write a coarse preview mesh every N steps")
    train.add_argument("--seed", type=int)
    train.add_argument("--region", type=float, nargs=4, metavar=("X", "Y", "Z", "R"),
                       help="the sphere to reconstruct, in world units (default: the rig's, or from the "
                            "masks' visual hull, or from where the cameras look)")
    train.add_argument("--resume", action="store_true", help="go on from the job's last checkpoint")
    train.add_argument("--overwrite", action="store_true",
                       help="replace an earlier job in --out (its checkpoints, meshes, events); without it "
                            "(or --resume) a folder holding a job is refused")
    train.add_argument("--downscale", type=int, help="train on images 1/N the size (area averaged)")
    train.add_argument("--holdout-every", type=int,
                       help="hold out every Nth view (index %% N == 0) for `evaluate`")
    train.add_argument("--largest-component", action="store_true",
                       help="keep only the largest connected piece of the mesh")
    train.add_argument("--no-masks", action="store_true",
                       help="ignore the images' alpha and the mask files: train on the full pictures, "
                            "with the background model (data.use_masks=false)")
    train.add_argument("--frames", metavar="A:B",
                       help="a dynamic rig's frames to train: A:B (both included), A:, :B or one frame A "
                            "(default: all)")
    train.add_argument("--canonical", action="store_true",
                       help="a dynamic job's meshes in the first frame's placement, each frame's motion in "
                            "sequence.json (default: every mesh where the object is at its frame)")
    train.add_argument("--set", action="append", default=[], metavar="SECTION.FIELD=VALUE",
                       help="override one field of the preset, e.g. render.sampler=hierarchical, "
                            "train.gradient=analytic, train.mixed_precision=off (repeatable; "
                            "`python -m engine preset NAME` lists the fields)")
    add_train_flags(train)
    add_calibrate_parser(sub)
    show = sub.add_parser("preset", help="print a preset's full configuration as JSON")
    show.add_argument("name", choices=presets)
    extract = sub.add_parser("extract", help="extract the mesh of a job from its last checkpoint")
    extract.add_argument("job", help="job directory")
    extract.add_argument("--resolution", type=int)
    extract.add_argument("--largest-component", action="store_true",
                         help="keep only the largest connected piece of the mesh")
    add_export_parser(sub)
    evaluate = sub.add_parser("evaluate", help="render a job's held-out views and report PSNR and mask IoU")
    evaluate.add_argument("job", help="job directory")
    evaluate.add_argument("--downscale", type=int, help="render at 1/N size (default: the training size)")
    curves = sub.add_parser("curves", help=f"(re)draw a job's loss and PSNR curves into JOB/{protocol.CURVES_FILE}")
    curves.add_argument("job", help="job directory")
    sub.add_parser("doctor", help="report (one JSON line) whether this Python can run the engine, and on what")
    return parser.parse_args(argv)


def add_calibrate_parser(sub):
    from .calibrate.sfm import CAMERA_MODES, MAPPERS, MATCHERS
    calibrate = sub.add_parser("calibrate", help="find the cameras of a folder of photographs or a video (COLMAP) "
                                                 "and write a dataset that `train --data` reads")
    calibrate.add_argument("--images", required=True,
                           help="a folder of photographs (JPEG, PNG, TIFF, HEIC) or a video file")
    calibrate.add_argument("--out", required=True, help="the dataset folder to write (new or empty)")
    calibrate.add_argument("--max-size", type=int, default=800,
                           help="match the photographs at most this many pixels wide or high (default 800)")
    calibrate.add_argument("--mapper", choices=MAPPERS, default="global",
                           help="global (GLOMAP: fast) or incremental (COLMAP's classic mapper)")
    calibrate.add_argument("--matcher", choices=MATCHERS, default="auto",
                           help="which pairs are matched: auto (sequential for a video, else exhaustive)")
    calibrate.add_argument("--every", type=int, help="a video: take every Nth frame (default: an automatic "
                                                     "choice of sharp, evenly spread frames)")
    calibrate.add_argument("--camera", choices=CAMERA_MODES, default="single",
                           help="one camera shared by every photograph (default), or one per photograph")
    calibrate.add_argument("--overwrite", action="store_true", help="replace what --out holds")


def calibrate_options(args):
    """engine.calibrate.sfm.Options from the calibrate flags (or their defaults), checked."""
    from .calibrate.sfm import Options
    max_size = getattr(args, "max_size", None) or Options.max_size
    every = getattr(args, "every", None)
    least, most = Options.MAX_SIZE_RANGE
    if not least <= max_size <= most:
        raise InputError(f"--max-size must be between {least} and {most} pixels, got {max_size}")
    if every is not None and every < 1:
        raise InputError(f"--every must be at least 1, got {every}")
    return Options(max_size=max_size, mapper=getattr(args, "mapper", "global"),
                   matcher=getattr(args, "matcher", "auto"), camera=getattr(args, "camera", "single"))


def run_calibrate(args, out):
    from .calibrate.run import Cancelled, calibrate
    from .calibrate.sfm import pycolmap_module
    options = calibrate_options(args)
    pycolmap_module()  # before CancelWatch: importing it installs glog's own SIGTERM handler
    cancel = CancelWatch()
    try:
        outputs = calibrate(args.images, args.out, out, options, every=args.every, overwrite=args.overwrite,
                            cancel=cancel.requested)
    except Cancelled:
        return cancelled_without_output(out, "calibration")
    finally:
        cancel.restore()
    out.emit(protocol.DONE, outputs=outputs)
    return protocol.EXIT_OK


def cancelled_without_output(out, what):
    """The end of a command cancelled before it wrote anything (calibrate, export): no checkpoint."""
    out.log(f"{what} cancelled; nothing was written")
    out.emit(protocol.CANCELLED, checkpoint=None, iteration=None)
    return protocol.EXIT_CANCELLED


def calibrate_into_job(args, out, cancel):
    """`train --data PHOTOS`: the photographs' dataset in JOB/dataset (calibrated now, or kept from an
    earlier run of the job); returns its transforms.json."""
    from .calibrate.run import calibrate
    dataset = os.path.join(args.out, protocol.DATASET_DIR)
    transforms = os.path.join(dataset, protocol.TRANSFORMS_FILE)
    if os.path.isfile(transforms):
        out.log(f"using the calibration in {dataset}")
        return transforms
    out.log(f"{args.data} holds photographs without cameras: calibrating them into {dataset} first")
    calibrate(args.data, dataset, out, calibrate_options(args), overwrite=True, cancel=cancel.requested,
              own_job=False)
    return transforms


def resolve_config(args, warn):
    from .config import preset
    from .export.command import apply_train_flags
    from .jobdir import read_config
    saved = os.path.join(args.out, protocol.CONFIG_FILE)
    if args.resume and os.path.exists(saved):
        cfg = read_config(saved)
    else:
        cfg = preset(args.preset)
    flags = (("iterations", "train.iterations"), ("resolution", "mesh.resolution"),
             ("downscale", "data.downscale"), ("holdout_every", "data.holdout_every"))
    for name, key in flags:
        value = getattr(args, name)
        if value is not None:
            problem = range_problem(key, value, "--" + name.replace("_", "-"))
            if problem:
                raise InputError(problem)
            section, field_name = key.split(".")
            setattr(getattr(cfg, section), field_name, value)
    if args.preview_every is not None:
        cfg.train.preview_every = max(0, args.preview_every)
    if args.seed is not None:
        cfg.train.seed = args.seed
    if args.largest_component:
        cfg.mesh.largest_component = True
    if args.no_masks:
        cfg.data.use_masks = False
    if args.frames is not None:
        cfg.set(f"dynamic.frames={args.frames}")
    if args.canonical:
        cfg.dynamic.coordinates = "canonical"
    apply_train_flags(args, cfg)
    for assignment in args.set:
        cfg.set(assignment)
    cfg.device = args.device
    if args.backend is not None:
        cfg.backend = args.backend
    elif args.resume and os.path.exists(saved):  # the saved backend is what ran there, maybe another machine
        from .nn.backends import reopened_backend
        from .session import resolve_device
        cfg.backend = reopened_backend(cfg.backend, resolve_device(cfg.device), cfg.encoding.features, warn)
    return cfg


def run_train(args, out):
    import torch  # the engine's heavy imports happen after the job exists, so errors are reported

    from .io.rig import load_rig
    from .session import Session
    from .train import ranks as spread
    from .train.dynamic import SequenceTrainer
    from .train.parallel import DataParallelTrainer
    from .train.trainer import Cancelled, Trainer, write_config
    from .jobdir import JobLock, check_out_folder, clear_job, holds_a_job
    ranks = spread.Ranks.from_env()  # torchrun's processes: rank 0 prepares the job folder, the others join
    check_out_folder(args.out)
    if ranks.leader and not args.resume and holds_a_job(args.out) and not args.overwrite:
        raise InputError(f"--out {os.path.abspath(args.out)} holds an earlier job: add --resume to go on with it, "
                         f"--overwrite to replace it, or choose another folder")
    from .calibrate.run import Cancelled as CalibrationCancelled, needs_calibration
    cfg = resolve_config(args, out.warn)
    photos = needs_calibration(args.data)
    if photos and ranks.spread:
        raise InputError(f"{args.data}: photographs without cameras are calibrated by one process; run "
                         f"`python -m engine calibrate` first, then torchrun the training on its dataset")
    if not photos:  # a rig is checked before the job folder is touched
        rig = load_rig(args.data)
        session = Session.open(cfg, rig, args.out, region=args.region)
        if ranks.spread:
            start_ranks(session, ranks)
        else:
            spread.check_single_resume(args.out, args.resume)
    if ranks.leader:
        os.makedirs(args.out, exist_ok=True)
        JobLock(args.out).acquire()  # held until the process ends
        if args.overwrite and not args.resume:
            clear_job(args.out)
        out.attach(args.out)
    if photos:
        from .calibrate.sfm import pycolmap_module
        pycolmap_module()  # before CancelWatch: importing it installs glog's own SIGTERM handler
    cancel = CancelWatch()  # from here on SIGINT/SIGTERM/`cancel` end the job with a `cancelled` event
    if photos:
        try:
            rig = load_rig(calibrate_into_job(args, out, cancel))
        except CalibrationCancelled:
            cancel.restore()
            out.emit(protocol.CANCELLED, checkpoint=None, iteration=None)
            return protocol.EXIT_CANCELLED
        except BaseException:
            cancel.restore()
            raise
        session = Session.open(cfg, rig, args.out, region=args.region)
    if ranks.leader:
        write_config(args.out, cfg)
        if ranks.spread and session.dynamic:
            spread.write_plan(args.out, ranks.world, session.frames, args.resume)
    if ranks.spread:
        torch.distributed.barrier()  # the job folder is ready (rank 0) before the other ranks use it
        if not ranks.leader:
            folder = spread.rank_dir(args.out, ranks.rank)
            os.makedirs(folder, exist_ok=True)
            JobLock(folder).acquire()
            out.attach(folder)
    share = ranks.local_world if session.device == "cpu" else 1
    threads, why = choose_threads(share=share)
    if ranks.spread and ranks.leader and session.dynamic and share > 1:
        # The other ranks wait for frame 0: rank 0 trains it on every core, then takes its share.
        ranks.shared_threads = threads
        threads, why = choose_threads(count_busy=False)  # (the load counts the waiting ranks' start-up)
        why += f"; {ranks.shared_threads} once frame 0 is done and the other processes start"
    torch.set_num_threads(threads)
    out.log(f"{threads} CPU thread{'s' if threads > 1 else ''} ({why})")
    try:
        # The kernels run once before the job starts; a backend that fails here gives way to torch
        # (with a warning event), and the job trains with what `started` names.
        session.check_backend(out.warn)
        spread.use_threads(threads, session.backend)
        out.emit(protocol.STARTED, **session.started_fields())
        out.log(f"training {rig.path} ({len(rig.views)} views) with preset {cfg.preset} on {session.device}, "
                f"{cfg.train.iterations} iterations, into {os.path.abspath(args.out)}")
        if session.dynamic and cfg.export.faces:
            out.warn("--export-faces exports static jobs when they end; export a dynamic job's frames later with "
                     "`python -m engine export JOB --frame F` or `--format usd`")
        kind = SequenceTrainer if session.dynamic else DataParallelTrainer if ranks.spread else Trainer
        outputs = kind(session, out, cancel.requested).run(resume=args.resume)
        if not ranks.leader:  # rank 0's `done` is the job's; this rank's own goes to its events file
            out.emit(protocol.DONE, outputs=outputs)
            return protocol.EXIT_OK
    except Cancelled:
        return protocol.EXIT_CANCELLED
    finally:
        cancel.restore()
    out.emit(protocol.DONE, outputs=outputs)
    return protocol.EXIT_OK


def start_ranks(session, ranks):
    """Join torchrun's process group and take this process's GPU: gloo on the CPU (a dynamic job only
    meets at the start; a static one averages its gradients every step), NCCL for CUDA tensors."""
    import torch
    if session.device == "cuda":
        torch.cuda.set_device(ranks.local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if session.device == "cuda" else "gloo")
    session.ranks = ranks


def load_job(job, out):
    """A Trainer restored from a finished (or cancelled) job's last checkpoint."""
    from .io.rig import load_rig
    from .session import Session
    from .train.checkpoints import latest_checkpoint
    from .jobdir import JobLock, read_config
    from .train.trainer import Trainer
    if not os.path.isfile(os.path.join(job, protocol.CONFIG_FILE)):
        raise InputError(f"{job}: not a job directory (no {protocol.CONFIG_FILE})")
    cfg = read_config(os.path.join(job, protocol.CONFIG_FILE))
    from .nn.backends import reopened_backend
    from .session import resolve_device
    cfg.backend = reopened_backend(cfg.backend, resolve_device(cfg.device), cfg.encoding.features, out.warn)
    events_path = os.path.join(job, protocol.EVENTS_FILE)
    events = protocol.read_events(events_path) if os.path.isfile(events_path) else []
    data = next((e.get("data") for e in events if e["event"] == protocol.STARTED), None)
    if not isinstance(data, str) or latest_checkpoint(job) is None:
        raise InputError(f"{job}: the job has no checkpoint yet")
    if any(e["event"] == protocol.STARTED and e.get("dynamic") for e in events):
        raise InputError(f"{job}: a dynamic job; its meshes are written frame by frame as it trains "
                         f"({protocol.MESHES_DIR}/), and extract and evaluate work on static jobs")
    JobLock(job).acquire()  # held until the process ends
    out.attach(job)
    trainer = Trainer(Session.checked(cfg, load_rig(data), job, out.warn), out)
    trainer.load()
    if trainer.resume_checkpoint() is None:
        raise InputError(f"{job}: no checkpoint of the job can be read")
    return trainer


def checked_flag(value, key, flag):
    """`value` of a command's own flag (extract --resolution, evaluate --downscale) checked against the
    configuration's range for the field it sets."""
    if value is not None:
        problem = range_problem(key, value, flag)
        if problem:
            raise InputError(problem)
    return value


def run_extract(args, out):
    resolution = checked_flag(args.resolution, "mesh.resolution", "--resolution")
    trainer = load_job(args.job, out)
    if resolution is not None:
        trainer.cfg.mesh.resolution = resolution
    if args.largest_component:
        trainer.cfg.mesh.largest_component = True
    out.emit(protocol.DONE, outputs=trainer.extract())
    return protocol.EXIT_OK


def run_export(args, out):
    """`export JOB`: the job's mesh decimated with a baked texture (engine.export.run)."""
    from .export.run import ExportCancelled, ExportOptions, export_dynamic, export_static, job_is_dynamic
    options = ExportOptions(faces=args.faces, texture=args.texture, format=args.format, frame=args.frame,
                            resolution=args.resolution, largest_component=args.largest_component).checked()
    if not os.path.isfile(os.path.join(args.job, protocol.CONFIG_FILE)):
        raise InputError(f"{args.job}: not a job directory (no {protocol.CONFIG_FILE})")
    cancel = CancelWatch()

    def check():
        if cancel.requested.is_set():
            raise ExportCancelled()

    try:
        if job_is_dynamic(args.job):
            outputs = export_dynamic(args.job, out, options, check)
        else:
            if options.frame is not None or options.format == "usd":
                what = "--frame" if options.frame is not None else "--format usd"
                raise InputError(f"{args.job}: a static job has one mesh; {what} is for dynamic jobs")
            outputs = export_static(load_job(args.job, out), out, options, check)
    except ExportCancelled:
        return cancelled_without_output(out, "export")
    finally:
        cancel.restore()
    out.emit(protocol.DONE, outputs=outputs)
    return protocol.EXIT_OK


def run_evaluate(args, out):
    from .evaluate import evaluate_views
    checked_flag(args.downscale, "data.downscale", "--downscale")
    trainer = load_job(args.job, out)
    views = trainer.held_out
    if not views:
        views = trainer.rig.views
        out.warn("the job held out no views (train with --holdout-every N): evaluating on training views")
    downscale = args.downscale if args.downscale is not None else trainer.cfg.data.downscale
    path, summary = evaluate_views(trainer, views, downscale, os.path.join(args.job, "eval"))
    out.emit(protocol.DONE, outputs={"eval": path, "psnr": summary["psnr"], "mask_iou": summary["mask_iou"]})
    return protocol.EXIT_OK


def run_curves(args, out):
    """Redraw JOB/curves.png from the job's events (read only: the job's events.jsonl is left as it is)."""
    from .curves import write_curves
    events_path = os.path.join(args.job, protocol.EVENTS_FILE)
    if not os.path.isfile(events_path):
        raise InputError(f"{args.job}: not a job directory (no {protocol.EVENTS_FILE})")
    path = os.path.join(args.job, protocol.CURVES_FILE)
    write_curves(protocol.read_events(events_path), path)
    out.emit(protocol.DONE, outputs={"curves": path})
    return protocol.EXIT_OK


def run_show_preset(args, out):
    import json

    from .config import preset
    print(json.dumps(preset(args.name).to_dict(), indent=2))
    return protocol.EXIT_OK


def main(argv=None):
    configure_openmp()  # before anything imports torch
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except UsageError as exc:
        out = Emitter()
        out.log(f"error: {exc}")
        out.emit(protocol.ERROR, message=str(exc))
        return protocol.EXIT_BAD_INPUT
    if args.command == "doctor":  # no events: one JSON report, whatever this Python lacks
        from .doctor import main as doctor
        return doctor()
    out = emitter_for(args.command)  # a torchrun rank after 0 prints only its frames, warnings and errors
    bad_input = ()  # the types below once they import: without torch, importing config is what fails
    try:
        from .io.rig import RigError
        bad_input = (RigError, InputError)
        commands = {"train": run_train, "extract": run_extract, "export": run_export, "evaluate": run_evaluate,
                    "preset": run_show_preset, "curves": run_curves, "calibrate": run_calibrate}
        return commands[args.command](args, out)
    except bad_input as exc:
        # Bad input: one error event a user can act on, no traceback.
        out.log(f"error: {exc}")
        out.emit(protocol.ERROR, message=str(exc))
        return protocol.EXIT_BAD_INPUT
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            return unexpected(exc, out)
        # A full disk: one clear event; the writers removed their temporary files and the checkpoints
        # before this one are intact.
        message = str(exc) if "no space left" in str(exc) else \
            f"no space left on the disk ({exc.filename or 'the job folder'}): free some space and resume"
        out.log(f"error: {message}")
        out.emit(protocol.ERROR, message=message)
        return protocol.EXIT_FAILED
    except MemoryError:
        out.emit(protocol.ERROR, message="out of memory: use the cpu preset, fewer iterations or a lower "
                                         "--resolution, or close other programs")
        return protocol.EXIT_FAILED
    except Exception as exc:  # a bug or a resource failure: still one error event, the traceback on stderr
        return unexpected(exc, out)
    finally:
        out.close()


def unexpected(exc, out):
    """One error event for an exception nobody expected (the traceback goes to stderr)."""
    from .doctor import engine_package, missing_module_message
    if isinstance(exc, ModuleNotFoundError) and engine_package(exc.name):
        # The engine's Python lacks torch (or numpy, ...): say which, and how to get a Python that has it.
        out.log(f"error: {exc}")
        out.emit(protocol.ERROR, message=missing_module_message(exc.name))
        return protocol.EXIT_FAILED
    traceback.print_exc()
    message = str(exc)
    if "out of memory" in message.lower():
        message = f"out of memory ({message.splitlines()[0]}): use a smaller preset or --resolution"
    out.emit(protocol.ERROR, message=f"engine failed: {type(exc).__name__}: {message}")
    return protocol.EXIT_FAILED

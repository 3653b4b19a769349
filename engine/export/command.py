"""The command line of exports: `python -m engine export JOB ...` and train's --export-* flags (standard
library only: the CLI builds its parser before anything heavy is imported)."""
from ..config import EXPORT_FORMATS as TRAIN_FORMATS
from ..config import RANGES
from ..io import protocol

DEFAULT_FACES = 50000  # engine.export.run's, repeated here for the help text (that module needs numpy)


def add_export_parser(sub):
    export = sub.add_parser("export", help="write a job's mesh decimated, with its colours baked into a "
                                           "texture: glTF binary, OBJ + MTL + PNG, PLY, or a dynamic job's USD")
    export.add_argument("job", help="job directory")
    export.add_argument("--faces", type=int,
                        help=f"decimate to about this many triangles (default {DEFAULT_FACES:,}; a USD sequence: "
                             f"every face unless given)")
    export.add_argument("--texture", type=int, default=2048, metavar="PX",
                        help="the texture's edge in pixels, %d to %d (default 2048)" % RANGES["export.texture"])
    export.add_argument("--format", choices=protocol.EXPORT_FORMATS, default="glb",
                        help="glb (one file, texture inside), obj (+ .mtl + .png), ply (vertex colours, no "
                             "texture), usd (a dynamic job's whole sequence)")
    export.add_argument("--frame", type=int, help="a dynamic job's frame to export")
    export.add_argument("--resolution", type=int,
                        help="extract a static job's surface again at this resolution first (default: use "
                             f"{protocol.MESHES_DIR}/{protocol.STATIC_MESH_FILE})")
    export.add_argument("--largest-component", action="store_true",
                        help="keep only the largest connected piece of the decimated mesh")


def add_train_flags(train):
    train.add_argument("--export-faces", type=int, metavar="N",
                       help="when training ends, also export the mesh decimated to about N faces with a baked "
                            "texture (static jobs; 0: no export, the default)")
    train.add_argument("--export-texture", type=int, metavar="PX", help="that export's texture edge (default 2048)")
    train.add_argument("--export-format", choices=TRAIN_FORMATS, help="that export's format (default glb)")


def apply_train_flags(args, cfg):
    """Train's --export-* flags into cfg.export (kept in config.json, so --resume keeps them)."""
    from ..config import InputError, range_problem
    for name, key in (("export_faces", "export.faces"), ("export_texture", "export.texture")):
        value = getattr(args, name, None)
        if value is not None:
            problem = range_problem(key, value, "--" + name.replace("_", "-"))
            if problem:
                raise InputError(problem)
            setattr(cfg.export, key.split(".")[1], value)
    if getattr(args, "export_format", None) is not None:
        cfg.export.format = args.export_format

"""The extension zip, built with Blender's own tool, and installing it into a sandboxed Blender
(standard library only; install_extension is handed the caller's bpy module)."""
import glob
import json
import os
import re
import shutil
import subprocess
import tempfile
import zipfile

from tools import REPO, BuildError
from tools.env import PINS, VENV, ensure_setup, venv_python

# What goes into the extension zip (the add-on and the engine; no tests, no build tooling).
EXTENSION_SOURCES = ("blender_manifest.toml", "__init__.py", "addon", "operators", "ui", "engine")
BUILD_INFO_FILE = "marble_build.json"
USER_REPO = "user_default"  # Blender's user extension repository: where "Install from Disk" puts it


def read_manifest(path):
    """(id, version) from a blender_manifest.toml."""
    with open(path, "rb") as f:
        raw = f.read()
    try:
        import tomllib
        data = tomllib.loads(raw.decode("utf-8"))
    except ImportError:
        text = raw.decode("utf-8")
        data = dict(re.findall(r'^\s*(id|version)\s*=\s*"([^"]*)"', text, flags=re.M))
    except ValueError as exc:
        raise BuildError(f"{path}: not valid TOML: {exc}") from None
    if not data.get("id") or not data.get("version"):
        raise BuildError(f"{path}: needs 'id' and 'version'")
    return data["id"], data["version"]


def blender_ext_cli(python=None):
    """Path of Blender's extension command line (blender_ext.py) inside the venv's bpy package."""
    pattern = os.path.join(VENV, "lib*", "python*", "site-packages", "bpy", "*", "scripts",
                           "addons_core", "bl_pkg", "cli", "blender_ext.py")
    found = sorted(glob.glob(pattern)) or sorted(glob.glob(os.path.join(
        VENV, "Lib", "site-packages", "bpy", "*", "scripts", "addons_core", "bl_pkg", "cli", "blender_ext.py")))
    return found[-1] if found else None


def build_extension(dist_dir=None, source_root=REPO):
    """Stage the extension, validate and build it with Blender's own tool; return the zip's path.

    Stages blender_manifest.toml, __init__.py, addon/, operators/, ui/ and engine/ (without
    __pycache__ and *.pyc) plus marble_build.json ({"python": the .venv interpreter, "version": the
    manifest's}) into a temporary folder, runs `blender_ext.py validate` and `build` with the venv's
    Python and checks that the engine is inside the zip.
    """
    dist_dir = os.path.abspath(dist_dir or os.path.join(REPO, "dist"))
    manifest = os.path.join(source_root, "blender_manifest.toml")
    if not os.path.isfile(manifest):
        raise BuildError(f"{manifest} is missing")
    ext_id, version = read_manifest(manifest)
    if blender_ext_cli() is None:
        ensure_setup()
    cli, python = blender_ext_cli(), venv_python()
    if cli is None:
        raise BuildError(f"Blender's blender_ext.py was not found in {VENV} (is bpy {PINS['bpy']} installed?)")
    missing = [name for name in EXTENSION_SOURCES if not os.path.exists(os.path.join(source_root, name))]
    if missing:
        raise BuildError(f"cannot build the extension: {', '.join(missing)} missing in {source_root}")
    os.makedirs(dist_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="marble-extension-")
    try:
        stage = os.path.join(tmp, ext_id)
        os.makedirs(stage)
        ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.pyo", ".*")
        for name in EXTENSION_SOURCES:
            source = os.path.join(source_root, name)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(stage, name), ignore=ignore)
            else:
                shutil.copy2(source, os.path.join(stage, name))
        info = {"python": os.path.abspath(python), "version": version, "repo": os.path.abspath(source_root)}
        with open(os.path.join(stage, BUILD_INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2)
        for command in (["validate", stage], ["build", "--source-dir", stage, "--output-dir", dist_dir]):
            result = subprocess.run([python, cli, *command], capture_output=True, text=True, cwd=tmp)
            if result.returncode != 0:
                raise BuildError(f"blender_ext.py {command[0]} failed (exit {result.returncode}):\n"
                                 f"{result.stdout}{result.stderr}".rstrip())
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    path = os.path.join(dist_dir, f"{ext_id}-{version}.zip")
    if not os.path.isfile(path):
        raise BuildError(f"Blender's build command did not write {path}")
    with zipfile.ZipFile(path) as archive:
        names = set(archive.namelist())
    for needed in ("blender_manifest.toml", "__init__.py", "engine/io/protocol.py", BUILD_INFO_FILE):
        if needed not in names:
            raise BuildError(f"{path} lacks {needed}")
    return path


def extension_package(repo=USER_REPO):
    """The Python package name Blender gives the installed extension (bl_ext.REPO.ID)."""
    return f"bl_ext.{repo}.{read_manifest(os.path.join(REPO, 'blender_manifest.toml'))[0]}"


def install_extension(bpy, dist_dir, repo=USER_REPO):
    """Build the zip into `dist_dir` and install it, enabled, into the running (sandboxed) Blender as a
    user would (Preferences > Get Extensions > Install from Disk); returns (package name, zip path).
    A package already enabled is left as it is (installing again would reload its modules)."""
    package = extension_package(repo)
    zip_path = build_extension(dist_dir)
    if package not in bpy.context.preferences.addons:
        result = bpy.ops.extensions.package_install_files(filepath=zip_path, repo=repo, enable_on_install=True)
        if result != {"FINISHED"} or package not in bpy.context.preferences.addons:
            raise BuildError(f"installing {zip_path} did not enable {package} (operator returned {result})")
    return package, zip_path

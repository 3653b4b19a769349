"""tools.extension.build_extension: the zip Blender's own tool builds holds the add-on, the engine and
marble_build.json, and nothing of the repository's tooling; Blender's validator accepts it."""
import json
import os
import shutil
import subprocess
import zipfile

import pytest

from tools import REPO, BuildError
from tools import extension
from tools.env import venv_python


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    dist = tmp_path_factory.mktemp("dist")
    path = extension.build_extension(str(dist))
    return dist, path


def test_zip_name_and_place(built):
    dist, path = built
    ext_id, version = extension.read_manifest(os.path.join(REPO, "blender_manifest.toml"))
    assert ext_id == "marble"
    assert path == os.path.join(str(dist), f"marble-{version}.zip")
    assert os.path.isfile(path)


def test_zip_contents(built):
    _, path = built
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        info = json.loads(archive.read(extension.BUILD_INFO_FILE))
    for needed in ("blender_manifest.toml", "__init__.py", "engine/__init__.py", "engine/io/protocol.py",
                   "engine/io/rig/__init__.py", "addon/__init__.py", "operators/__init__.py", "ui/__init__.py"):
        assert needed in names, needed
    # Every engine source file goes in.
    engine_dir = os.path.join(REPO, "engine")
    for folder, dirs, files in os.walk(engine_dir):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for name in files:
            if name.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, name), REPO).replace(os.sep, "/")
                assert rel in names, rel
    # No tooling, tests, caches or hidden files.
    for name in names:
        top = name.split("/")[0]
        assert top in extension.EXTENSION_SOURCES + (extension.BUILD_INFO_FILE,), name
        assert "__pycache__" not in name and not name.endswith(".pyc"), name
        assert not any(part.startswith(".") for part in name.split("/")), name
    # The interpreter recorded for the add-on's default preference is this checkout's venv.
    assert info["python"] == os.path.abspath(venv_python())
    assert os.path.isfile(info["python"])
    assert info["version"] == extension.read_manifest(os.path.join(REPO, "blender_manifest.toml"))[1]


def test_zip_passes_blender_validate(built):
    _, path = built
    result = subprocess.run([venv_python(), extension.blender_ext_cli(), "validate", path],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_build_is_repeatable(built, tmp_path):
    # Building again over an existing zip replaces it.
    dist, path = built
    again = extension.build_extension(str(dist))
    assert again == path
    with zipfile.ZipFile(again) as archive:
        assert archive.testzip() is None


def test_bad_manifest_is_reported(tmp_path):
    source = tmp_path / "source"
    source.mkdir()
    for name in extension.EXTENSION_SOURCES:
        src = os.path.join(REPO, name)
        if os.path.isdir(src):
            shutil.copytree(src, source / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, source / name)
    manifest = source / "blender_manifest.toml"
    manifest.write_text(manifest.read_text().replace('version = "', 'version = "not-semver-', 1))
    with pytest.raises(BuildError, match="validate failed"):
        extension.build_extension(str(tmp_path / "dist"), source_root=str(source))
    assert not (tmp_path / "dist").exists() or not os.listdir(tmp_path / "dist")
    (source / "blender_manifest.toml").unlink()
    with pytest.raises(BuildError, match="blender_manifest.toml is missing"):
        extension.build_extension(str(tmp_path / "dist"), source_root=str(source))

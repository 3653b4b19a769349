"""Blender's habits: File > Import entries and drag and drop (FileHandlers) for the rig, the mesh and the
sequence, through the same operators as the sidebar. A drop is played as Blender plays it: the handler
whose extensions match names the operator, which is invoked with the dropped file's `filepath` (and
`directory`, where it has one) and imports at once, reporting what it imported."""
import json
import os
import sys
import types

import bpy
import numpy as np
import pytest

from conftest import icosphere, make_rig, ring_cameras, write_ply
import rig_files

HANDLERS = {"MARBLE_FH_rig": (".json;.npz", "marble.import_rig"),
            "MARBLE_FH_mesh": (".glb;.ply", "marble.import_mesh"),
            "MARBLE_FH_sequence": (".usdc", "marble.import_sequence")}
IMPORTERS = ("import_rig", "import_mesh", "import_sequence")


def module(marble, name):
    return sys.modules[f"{marble.package}.operators.{name}"]


def marble_handlers():
    return {cls.bl_idname: cls for cls in bpy.types.FileHandler.__subclasses__() if cls.bl_idname.startswith("MARBLE_")}


def drop(path):
    """Drop `path` as Blender does: the Marble handler for its extension, its operator invoked with the
    file's path (and folder, for an operator that has `directory`)."""
    extension = os.path.splitext(path)[1].lower()
    handler = next(cls for cls in marble_handlers().values() if extension in cls.bl_file_extensions.split(";"))
    category, name = handler.bl_import_operator.split(".")
    operator = getattr(getattr(bpy.ops, category), name)
    options = {"filepath": path}
    if "directory" in operator.get_rna_type().properties:
        options["directory"] = os.path.dirname(path) + os.sep
    return operator('INVOKE_DEFAULT', **options)


def write_glb(path, world, faces):
    """A textured .glb exactly as the engine writes it (engine.export.gltf: file positions (x, z, -y) of
    the world, an embedded PNG)."""
    import io

    from PIL import Image

    from engine.export.gltf import glb_bytes

    normals = world - world.mean(axis=0)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    uv = (world[:, :2] - world[:, :2].min(0)) / np.ptp(world[:, :2], axis=0)
    png = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 90, np.uint8)).save(png, format="PNG")
    with open(path, "wb") as f:
        f.write(glb_bytes(world, normals, uv, faces, png.getvalue(), name="Marble"))
    return str(path)


def test_file_import_menu_has_the_entries(marble):
    draw_funcs = bpy.types.TOPBAR_MT_file_import.draw._draw_funcs
    menu_import = module(marble, "file_handlers").menu_import
    photos = module(marble, "import_photos").menu_import
    assert menu_import in draw_funcs and photos in draw_funcs
    assert draw_funcs.index(menu_import) < draw_funcs.index(photos)  # Marble's entries together

    class Layout:
        def __init__(self):
            self.entries = []

        def separator(self):
            pass

        def operator(self, idname, text="", icon='NONE'):
            self.entries.append((idname, text))

    menu = types.SimpleNamespace(layout=Layout())
    menu_import(menu, bpy.context)
    assert menu.layout.entries == [("marble.import_rig", "Camera Rig (Marble)"),
                                   ("marble.import_mesh", "Mesh (Marble) (.ply/.glb)"),
                                   ("marble.import_sequence", "Mesh Sequence (Marble) (sequence.json/.usdc)")]
    # The same operators as the sidebar, with file browser filters for what they read.
    globs = {name: getattr(bpy.ops.marble, name).get_rna_type().properties["filter_glob"].default for name in IMPORTERS}
    assert set(globs["import_rig"].split(";")) >= {"*.json", "*.npz"}
    assert set(globs["import_mesh"].split(";")) == {"*.ply", "*.glb"}
    assert set(globs["import_sequence"].split(";")) >= {"*.json", "*.usdc"}


def test_file_handlers_are_registered(marble):
    handlers = marble_handlers()
    assert {name: (cls.bl_file_extensions, cls.bl_import_operator) for name, cls in handlers.items()} == HANDLERS
    for cls in handlers.values():
        assert cls.is_registered
        category, name = cls.bl_import_operator.split(".")
        assert "filepath" in getattr(getattr(bpy.ops, category), name).get_rna_type().properties
        # Drops land in the 3D viewport and the outliner's view layer, nowhere else.
        for area, expected in ((types.SimpleNamespace(type='VIEW_3D'), True),
                               (types.SimpleNamespace(type='OUTLINER', spaces=types.SimpleNamespace(
                                   active=types.SimpleNamespace(display_mode='VIEW_LAYER'))), True),
                               (types.SimpleNamespace(type='OUTLINER', spaces=types.SimpleNamespace(
                                   active=types.SimpleNamespace(display_mode='SCENES'))), False),
                               (types.SimpleNamespace(type='IMAGE_EDITOR'), False), (None, False)):
            assert cls.poll_drop(types.SimpleNamespace(area=area)) is expected
    # One undo step per import: each importer is an undoable operator (bpy.ops.ed.undo cannot run
    # without a window, so the undo itself is not exercised here).
    for name in IMPORTERS:
        assert {'REGISTER', 'UNDO'} <= getattr(bpy.types, f"MARBLE_OT_{name}").bl_options, name


def test_dropped_rigs_import_at_once(marble, tmp_path, capsys):
    path = make_rig(tmp_path, ring_cameras(count=3), name="studio")
    assert drop(path) == {'FINISHED'}
    assert "Info: Imported 3 cameras from transforms.json into 'studio'" in capsys.readouterr().out
    assert bpy.context.scene.marble.rig_collection.name == "studio"

    npz = rig_files.write_idr_npz(tmp_path / "dtu", ring_cameras(count=4))
    assert drop(npz) == {'FINISHED'}
    assert "Info: Imported 4 cameras from cameras_sphere.npz into 'dtu'" in capsys.readouterr().out
    assert len([o for o in bpy.data.collections["dtu"].objects if o.type == 'CAMERA']) == 4


def test_dropped_sequence_json_goes_to_import_sequence(marble, tmp_path, capsys):
    meshes = tmp_path / "dancer" / "meshes"
    meshes.mkdir(parents=True)
    vertices, faces = icosphere(0.3)
    entries = []
    for frame in (4, 5):
        write_ply(meshes / f"frame_{frame:06d}.ply", vertices + [0.1 * frame, 0.0, 0.0], faces)
        entries.append({"frame": frame, "mesh": f"frame_{frame:06d}.ply", "world_from_canonical": np.eye(4).tolist()})
    with open(meshes / "sequence.json", "w") as f:
        json.dump({"frames": entries}, f)
    assert drop(str(meshes / "sequence.json")) == {'FINISHED'}
    assert "Imported 2 frames (4 to 5)" in capsys.readouterr().out
    assert sorted(o.name for o in bpy.data.objects) == ["dancer 000004", "dancer 000005"]
    assert bpy.context.scene.marble.rig_collection is None  # not taken for a rig


def test_a_json_that_is_neither_is_reported(marble, tmp_path):
    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"theme": "dark"}))
    with pytest.raises(RuntimeError, match=f"{path}: neither a camera rig .* nor a Marble sequence"):
        drop(str(path))
    assert not bpy.data.objects and not bpy.data.collections


def test_dropped_meshes_import_at_once(marble, tmp_path, capsys):
    bpy.ops.marble.import_rig(filepath=make_rig(tmp_path, ring_cameras(count=3), name="studio"))
    capsys.readouterr()
    vertices, faces = icosphere(0.5)
    world = vertices + [0.3, -0.4, 1.2]
    assert drop(write_ply(tmp_path / "mesh.ply", world, faces)) == {'FINISHED'}
    assert "Info: Imported 'mesh' from mesh.ply: 12 vertices, 20 faces" in capsys.readouterr().out
    assert drop(write_glb(tmp_path / "mesh_textured.glb", world, faces)) == {'FINISHED'}
    obj = bpy.data.objects["studio textured"]
    assert f"Info: Imported 'studio textured' from mesh_textured.glb: {len(obj.data.vertices)} vertices, 20 faces, " \
           "texture 8x8" in capsys.readouterr().out
    collection = bpy.data.collections["studio"]
    assert {o.name for o in collection.objects if o.type == 'MESH'} == {"mesh", "studio textured"}
    co = np.array([v.co[:] for v in obj.data.vertices])
    assert np.abs(co[:, None, :] - world[None, :, :]).max(axis=2).min(axis=1).max() < 1e-5
    # Dropped again: the same object, no second copy.
    assert drop(str(tmp_path / "mesh_textured.glb")) == {'FINISHED'}
    assert [o.name for o in bpy.data.objects if o.get("marble_textured")] == ["studio textured"]
    assert [i.name for i in bpy.data.images if i.packed_file is not None] == ["studio textured"]
    assert sorted(m.name for m in bpy.data.materials) == ["Marble Vertex Color", "studio textured"]
    assert all(block.users > 0 for kind in ("meshes", "materials", "images") for block in getattr(bpy.data, kind))


def test_several_meshes_in_one_drop(marble, tmp_path, capsys):
    vertices, faces = icosphere(0.5)
    for name in ("a", "b"):
        write_ply(tmp_path / f"{name}.ply", vertices, faces)
    result = bpy.ops.marble.import_mesh('INVOKE_DEFAULT', filepath=str(tmp_path / "a.ply"),
                                        directory=str(tmp_path) + os.sep, files=[{"name": "a.ply"}, {"name": "b.ply"}])
    assert result == {'FINISHED'}
    assert sorted(o.name for o in bpy.data.objects) == ["a", "b"]
    out = capsys.readouterr().out
    assert "Imported 'a' from a.ply" in out and "Imported 'b' from b.ply" in out


@pytest.mark.parametrize("problem, match", [
    ("garbage", "not a glTF binary file"),
    ("truncated", "truncated or padded"),
    ("untextured", "its mesh has no texture coordinates"),
])
def test_a_bad_glb_is_reported_and_adds_nothing(marble, tmp_path, problem, match):
    vertices, faces = icosphere(0.5)
    path = write_glb(tmp_path / "mesh_textured.glb", vertices, faces)
    data = open(path, "rb").read()
    if problem == "garbage":
        data = b"PK\x03\x04 not a glb at all"
    elif problem == "truncated":
        data = data[:-100]
    else:
        import trimesh
        data = trimesh.Trimesh(vertices, faces, process=False).export(file_type="glb")
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(RuntimeError, match=f"{path}: {match}"):
        drop(path)
    assert not bpy.data.objects and not bpy.data.meshes and not bpy.data.images and not bpy.data.materials


def test_dropped_usd_sequence_goes_to_import_sequence(marble, tmp_path, capsys):
    pxr = pytest.importorskip("pxr")
    from pxr import Usd, UsdGeom

    vertices, faces = icosphere(0.4)
    path = str(tmp_path / "sequence.usdc")
    stage = Usd.Stage.CreateNew(path)
    UsdGeom.SetStageUpAxis(stage, UsdGeom.Tokens.z)
    stage.SetStartTimeCode(2)
    stage.SetEndTimeCode(3)
    mesh = UsdGeom.Mesh.Define(stage, "/sequence")
    mesh.CreateFaceVertexCountsAttr([3] * len(faces))
    mesh.CreateFaceVertexIndicesAttr(faces.ravel().tolist())
    points = mesh.CreatePointsAttr()
    for frame in (2, 3):
        points.Set([tuple(p + [frame, 0.0, 0.0]) for p in vertices], frame)
    stage.GetRootLayer().Save()
    del stage, pxr
    assert drop(path) == {'FINISHED'}
    assert "streamed from sequence.usdc" in capsys.readouterr().out
    assert (bpy.context.scene.frame_start, bpy.context.scene.frame_end) == (2, 3)
    assert len([o for o in bpy.data.objects if o.get("marble_usd")]) == 1

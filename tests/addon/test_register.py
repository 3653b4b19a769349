"""The built extension installs, registers its operators, panel, properties and preferences, and
its panel draws in every job state."""
import os
import sys

import bpy
import pytest

from engine import config
from tools.env import venv_python

OPERATORS = ("MARBLE_OT_import_rig", "MARBLE_OT_export_rig", "MARBLE_OT_cancel_export", "MARBLE_OT_train",
             "MARBLE_OT_cancel", "MARBLE_OT_import_mesh", "MARBLE_OT_export_textured",
             "MARBLE_OT_export_sequence_usd")


def test_extension_registers(marble):
    for name in OPERATORS:
        assert hasattr(bpy.types, name), name
    for op in ("import_rig", "export_rig", "cancel_export", "train", "cancel", "import_mesh"):
        assert hasattr(bpy.ops.marble, op)
    assert "filepath" in bpy.ops.marble.import_rig.get_rna_type().properties
    import_props = bpy.ops.marble.import_rig.get_rna_type().properties
    assert {"filepath", "directory", "background_images"} <= set(import_props.keys())
    assert import_props["background_images"].default is True
    export_props = bpy.ops.marble.export_rig.get_rna_type().properties
    assert {"filepath", "use_selection", "render_images", "transparent_background"} <= set(export_props.keys())
    assert export_props["render_images"].default is False
    assert "region" in bpy.context.scene.marble.bl_rna.properties
    assert bpy.context.window_manager.marble_export.state == 'idle'
    assert "filepath" in bpy.ops.marble.import_mesh.get_rna_type().properties

    panel = bpy.types.MARBLE_PT_main
    assert panel.is_registered
    assert (panel.bl_space_type, panel.bl_region_type, panel.bl_category) == ('VIEW_3D', 'UI', "Marble")

    settings = bpy.context.scene.marble
    assert (settings.rig_path, settings.preset, settings.iterations, settings.resolution,
            settings.device, settings.use_masks, settings.job_dir) == ("", 'default', 0, 256, 'default', True, "")
    assert (settings.export_faces, settings.export_texture) == (50000, '2048')
    assert [item.identifier for item in settings.bl_rna.properties["export_texture"].enum_items] == [
        '512', '1024', '2048', '4096']
    # 'default' means the preferences' choice.
    assert (marble.prefs.default_preset, marble.prefs.default_device, marble.prefs.preview_every) == ('cpu', 'auto', 100)
    for name in ("MARBLE_PT_rig", "MARBLE_PT_train", "MARBLE_PT_job", "MARBLE_PT_results"):
        assert getattr(bpy.types, name).bl_parent_id == "MARBLE_PT_main", name
    for op in ("resume", "show_curves", "open_job_folder", "check_engine"):
        assert hasattr(bpy.ops.marble, op), op
    job = bpy.context.window_manager.marble_job
    for name in ("state", "progress", "iteration", "total", "loss", "psnr", "eta_s", "stage", "frame", "message",
                 "job_dir", "mesh_path", "resumable"):
        assert name in job.bl_rna.properties, name
    assert job.state == 'idle'
    assert {item.identifier for item in job.bl_rna.properties["state"].enum_items} == {
        'idle', 'running', 'cancelling', 'cancelled', 'failed', 'done'}

    # The zip records build.py's interpreter; the preference defaults to it.
    assert os.path.isfile(os.path.join(marble.module.__path__[0], "marble_build.json"))
    assert marble.engine_python.default_python() == venv_python()
    assert marble.prefs.bl_rna.properties["python"].default == venv_python()
    # The engine's contract modules are inside the extension and import from Blender's Python.
    assert sys.modules[marble.package + ".engine.io.protocol"].CANCEL_LINE == "cancel"


def test_choices_and_ranges_come_from_the_engine_config(marble):
    """The presets, devices and mesh resolution the add-on offers are engine.config's (plus the scene's
    'default'), so the panel and the engine's command line cannot disagree."""
    scene_props = bpy.context.scene.marble.bl_rna.properties
    prefs_props = marble.prefs.bl_rna.properties
    for name, choices in (("preset", config.PRESETS), ("device", config.DEVICES)):
        items = {item.identifier: (item.name, item.description) for item in scene_props[name].enum_items}
        assert items.pop('default')[0] == "Default" and items == choices, name
        items = {item.identifier: (item.name, item.description) for item in prefs_props["default_" + name].enum_items}
        assert items == choices, name
    resolution = scene_props["resolution"]
    assert (resolution.hard_min, resolution.hard_max) == config.RANGES["mesh.resolution"] == (8, 2048)


def test_progress_bar_api_exists(marble):
    # The panel relies on UILayout.progress (Blender 4.0+) with these keywords.
    params = bpy.types.UILayout.bl_rna.functions["progress"].parameters.keys()
    assert {"factor", "type", "text"} <= set(params)


class RecordingLayout:
    """Stands in for UILayout (the headless module draws nothing) and checks what the panel asks for."""

    def __init__(self, calls):
        self.calls = calls
        self.enabled = True
        self.scale_y = 1.0

    def _child(self, *args, **kwargs):
        return RecordingLayout(self.calls)

    row = column = box = split = _child

    def label(self, text="", icon='NONE'):
        if icon != 'NONE':
            assert icon in bpy.types.UILayout.bl_rna.functions["label"].parameters["icon"].enum_items.keys(), icon
        self.calls.append(("label", text))

    def prop(self, data, name, **kwargs):
        assert name in data.bl_rna.properties, name
        self.calls.append(("prop", name))

    def operator(self, idname, **kwargs):
        category, name = idname.split(".")
        assert hasattr(getattr(bpy.ops, category), name), idname
        self.calls.append(("operator", idname))

    def progress(self, factor=0.0, type='BAR', text=""):
        assert 0.0 <= factor <= 1.0 and type in ('BAR', 'RING')
        self.calls.append(("progress", factor, text))


PANELS = ("MARBLE_PT_main", "MARBLE_PT_rig", "MARBLE_PT_train", "MARBLE_PT_job", "MARBLE_PT_results")


def draw_panels(calls):
    """Draw the parent panel and every sub-panel whose poll passes, as Blender would."""
    for name in PANELS:
        panel = getattr(bpy.types, name)
        poll = getattr(panel, "poll", None)
        if poll is not None and not poll(bpy.context):
            continue
        # The panel's own class attributes (e.g. header_icon) with a recording layout.
        fake = type("FakePanel", (), {"layout": RecordingLayout(calls),
                                      "header_icon": getattr(panel, "header_icon", 'NONE')})()
        if hasattr(panel, "draw_header"):
            panel.draw_header(fake, bpy.context)
        panel.draw(fake, bpy.context)


@pytest.mark.parametrize("state", ['idle', 'running', 'failed', 'done'])
def test_panel_draws(marble, state):
    job = bpy.context.window_manager.marble_job
    job.state = state
    job.progress, job.iteration, job.total, job.loss, job.psnr, job.eta_s = 0.25, 250, 1000, 0.0123, 27.5, 95.0
    job.message = "first line\n" + "a long message " * 10
    calls = []
    draw_panels(calls)
    ops = [c[1] for c in calls if c[0] == "operator"]
    assert {"marble.import_rig", "marble.export_rig", "marble.train", "marble.import_mesh", "marble.show_curves",
            "marble.open_job_folder"} <= set(ops)
    labels = " | ".join(c[1] for c in calls if c[0] == "label")
    assert "No rig imported" in labels
    if state == 'idle':
        assert not any(c[0] == "progress" for c in calls)
    else:
        expected = "25%, 1:35 left" if state == 'running' else "25%"  # the ETA only while it runs
        assert ("progress", 0.25, expected) in calls
        assert "Iteration: 250 / 1000" in labels and "Loss: 0.0123" in labels and "PSNR: 27.50 dB" in labels
        assert "first line" in labels
    assert "marble.cancel" not in ops  # only while a job process actually runs
    assert "marble.resume" not in ops  # only for a stopped job with a checkpoint


def _draw():
    calls = []
    draw_panels(calls)
    return calls, " | ".join(c[1] for c in calls if c[0] == "label")


def test_panel_shows_rig_region_and_export(marble, tmp_path):
    from conftest import make_rig, ring_cameras

    bpy.ops.marble.import_rig(filepath=make_rig(tmp_path, ring_cameras(count=4), name="studio"))
    calls, labels = _draw()
    assert "studio: 4 cameras, 1 frame" in labels
    assert ("prop", "region") in calls and "Region: automatic" in labels
    bpy.context.scene.marble.region.location.x += 1.0
    calls, labels = _draw()
    # Half the median camera distance, sqrt(3^2 + 0.8^2) / 2, around the point all cameras look at.
    assert "Region: radius 1.552 at (1, 0, 0)" in labels

    export = bpy.context.window_manager.marble_export
    export.state, export.progress, export.done, export.total, export.camera = 'running', 0.5, 2, 4, "cam_01"
    calls, labels = _draw()
    assert ("progress", 0.5, "2 / 4 images") in calls and "Rendered: cam_01" in labels
    assert ("operator", "marble.cancel_export") in calls
    export.state, export.message = 'cancelled', "Cancelled after 2 of 4 images"
    calls, labels = _draw()
    assert "Export: Cancelled" in labels and "Cancelled after 2 of 4 images" in labels
    assert ("operator", "marble.cancel_export") not in calls
    export.state = 'idle'


def test_disable_and_enable_again(marble):
    package = marble.package
    bpy.ops.preferences.addon_disable(module=package)
    try:
        assert not hasattr(bpy.types, "MARBLE_PT_main")
        assert not hasattr(bpy.types.WindowManager, "marble_job")
        assert not hasattr(bpy.types.Scene, "marble")
    finally:
        bpy.ops.preferences.addon_enable(module=package)
    assert hasattr(bpy.types, "MARBLE_PT_main")
    assert bpy.context.window_manager.marble_job.state == 'idle'

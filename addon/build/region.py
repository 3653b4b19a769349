# SPDX-License-Identifier: GPL-3.0-or-later
"""The region to reconstruct: an empty with a sphere display in the rig's collection.

Its world matrix maps the unit sphere onto the region (in the rig's world coordinates), so moving and
scaling the empty moves and scales the region. It starts as the rig's normalisation when the rig has
one (IDR's scale_mat, or a normalisation written by Marble's export); otherwise as an estimate from the
cameras, marked automatic. Training passes `--region X Y Z R` unless the region is automatic and
untouched: then the engine estimates its own (from the masks' visual hull) and reports it, and the
empty follows that report, so the user sees the region actually used.
"""
import bpy
import numpy as np
from mathutils import Matrix

from ...engine.io.region import sphere_matrix

PROP_AUTO = "marble_region_auto"        # True: estimated from the cameras (or the engine's report)
PROP_INITIAL = "marble_region_initial"  # 16 floats: the region as last set by Marble (row-major 4x4)
TOLERANCE = 1e-5                        # relative: float32 matrices, values from Blender's UI


def build_region(name, matrix, auto, collection, created):
    """The region empty (display SPHERE, size 1) with world matrix `matrix`, linked into `collection`."""
    obj = bpy.data.objects.new(name, None)
    created.append(obj)
    obj.empty_display_type = 'SPHERE'
    obj.empty_display_size = 1.0
    obj.hide_render = True
    obj.show_in_front = True
    _set(obj, matrix, auto)
    collection.objects.link(obj)
    return obj


def _set(obj, matrix, auto):
    obj.matrix_world = Matrix(np.asarray(matrix, dtype=float).tolist())
    obj.empty_display_size = 1.0
    obj[PROP_AUTO] = bool(auto)
    # Stored as Blender holds it (float32), so "untouched" compares like with like.
    obj[PROP_INITIAL] = [float(x) for x in region_matrix(obj).ravel()]


def world_matrix(obj):
    """obj's world matrix from its current location/rotation/scale (and parent), without waiting for
    the depsgraph: matrix_world is only refreshed by an evaluation, which a panel's draw cannot ask for."""
    matrix = obj.matrix_basis
    if obj.parent is not None:
        matrix = world_matrix(obj.parent) @ obj.matrix_parent_inverse @ matrix
    return matrix


def region_matrix(obj):
    """The empty's unit-sphere -> world matrix (its display size counts as a scale)."""
    matrix = np.array(world_matrix(obj), dtype=float)
    matrix[:3, :3] *= float(obj.empty_display_size)
    return matrix


def similarity(obj):
    """region_matrix() as a similarity (uniform scale, rotation, translation), the form a rig's
    normalisation takes: a non-uniformly scaled or sheared empty becomes the sphere training uses
    (its largest scale), keeping its rotation."""
    matrix = region_matrix(obj)
    linear = matrix[:3, :3]
    scales = np.linalg.norm(linear, axis=0)
    rotation = linear / scales
    if (np.abs(scales - scales.max()).max() <= 1e-6 * scales.max()
            and np.abs(rotation @ rotation.T - np.eye(3)).max() <= 1e-6 and np.linalg.det(rotation) > 0):
        return matrix
    u, _, vt = np.linalg.svd(linear)
    rotation = u @ vt
    if np.linalg.det(rotation) < 0:
        rotation = u @ np.diag([1.0, 1.0, -1.0]) @ vt
    result = np.eye(4)
    result[:3, :3] = scales.max() * rotation
    result[:3, 3] = matrix[:3, 3]
    return result


def is_auto(obj):
    return bool(obj.get(PROP_AUTO, False))


def is_untouched(obj):
    """True when the empty is where Marble last put it (not moved, rotated, scaled or resized)."""
    initial = obj.get(PROP_INITIAL)
    if initial is None or len(initial) != 16:
        return False
    initial = np.array(initial, dtype=float).reshape(4, 4)
    scale = max(1.0, float(np.abs(initial).max()))
    return bool(np.abs(region_matrix(obj) - initial).max() <= TOLERANCE * scale)


def sphere(obj):
    """(centre, radius) of the region: the world position and the largest scale of the empty."""
    matrix = region_matrix(obj)
    return matrix[:3, 3].copy(), float(np.linalg.norm(matrix[:3, :3], axis=0).max())


def scene_region(scene):
    """The scene's region empty (scene.marble.region) when it still exists in the scene, else None."""
    obj = scene.marble.region
    if obj is None or obj.type != 'EMPTY' or scene.objects.get(obj.name) is None:
        return None
    return obj


def is_explicit(obj):
    """Whether the region is one the user (or the rig) chose, rather than an untouched estimate."""
    return not (is_auto(obj) and is_untouched(obj))


def training_region(scene):
    """(centre, radius) to pass as `--region`, or None: no region empty, or an automatic and untouched
    one (the engine then estimates its own region, better, from the masks)."""
    obj = scene_region(scene)
    if obj is None or not is_explicit(obj):
        return None
    return sphere(obj)


def follow(obj, centre, radius):
    """Move an automatic region to the sphere the engine reports it used (stays automatic, untouched)."""
    centre = np.asarray(centre, dtype=float).reshape(3)
    radius = float(radius)
    if not (np.isfinite(centre).all() and np.isfinite(radius) and radius > 0.0):
        return False
    _set(obj, sphere_matrix(centre, radius), True)
    return True

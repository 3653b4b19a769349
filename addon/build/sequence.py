# SPDX-License-Identifier: GPL-3.0-or-later
"""Mesh sequences: a dynamic job's sequence.json (read and checked by engine.io.sequence, which
describes the file) -> one object per frame in a collection, each shown from its frame until the next.

Object i (frames sorted) has constant keys on hide_viewport and hide_render: hidden at f_i - 1, shown
at f_i, hidden again at f_{i+1} (f_i + 1 for the last), so exactly one object shows at every frame from
the first to the last. "canonical" sequences place each object by its world_from_canonical, keyed at
its frame. build_sequence() reads every mesh before creating anything and removes what it made when
anything fails. LiveSequence grows a job's collection one frame at a time (from the job client's
tick), re-keying only the new frame's predecessor.
"""
import bisect
import collections
import os

import bpy
from mathutils import Matrix

from ...engine.io.sequence import SequenceError, decompose, read_frame_mesh, read_meshes
from . import blocks
from .mesh import MATERIAL_NAME, mesh_from_arrays
from .rig import PROP_FRAME, PROP_FRAME_COUNT

# Custom properties.
PROP_SEQUENCE = "marble_sequence"          # collection: the sequence.json it came from
PROP_COORDINATES = "marble_coordinates"    # collection: "world" or "canonical"
PROP_MESH = "marble_mesh"                  # object: the PLY it was made from
PROP_SECONDS = "marble_seconds"            # object: seconds the engine spent on the frame, when given
PROP_WORLD_FROM_CANONICAL = "marble_world_from_canonical"  # object: 16 floats, row-major, when given
PROP_JOB = "marble_job"                    # collection: the job folder whose training fills it (LiveSequence)
HIDE_PATHS = ("hide_viewport", "hide_render")


SequenceBuild = collections.namedtuple("SequenceBuild", "collection objects")


# ---------------------------------------------------------------------------------------------
# Building

def visibility_keys(frames):
    """For sorted distinct `frames`: per frame, the (frames, hidden values) keys that show its object
    from its frame until the next frame (one frame for the last) and hide it everywhere else."""
    return [_shown_keys(frame, frames[i + 1] if i + 1 < len(frames) else frame + 1)
            for i, frame in enumerate(frames)]


def _shown_keys(frame, end):
    """(frames, hidden values): hidden at frame - 1, shown at `frame`, hidden again at `end`."""
    return [frame - 1, frame, end], [1.0, 0.0, 1.0]


def key_visibility(obj, frame, end, created, current=None):
    """Key `obj` (constant) hidden at frame - 1, shown at `frame`, hidden again at `end`, on both
    hide_viewport and hide_render, replacing the keys it had. With `current` (the scene's frame), also
    set both properties to their value there, as the animation would."""
    anim = obj.animation_data
    action = anim.action if anim is not None else None
    if action is not None:
        for path in HIDE_PATHS:
            if hasattr(action, "fcurve_ensure_for_datablock"):  # Blender 4.4+: layered actions
                fcurve = action.fcurve_ensure_for_datablock(obj, path, index=0)
            else:
                fcurve = action.fcurves.find(path, index=0)
            if fcurve is not None:
                fcurve.keyframe_points.clear()
    key_frames, hidden = _shown_keys(frame, end)
    values = [[v] for v in hidden]
    for path in HIDE_PATHS:
        blocks.keyframes(obj, path, key_frames, values, created)
    if current is not None:
        obj.hide_viewport = obj.hide_render = not frame <= current < end


def _frame_object(collection, label, mesh, entry, canonical, end, current, created):
    """The object of one frame: linked into `collection`, with its custom properties, its visibility
    keys (shown from its frame until `end`) and, for a canonical sequence, its placement."""
    obj = bpy.data.objects.new(label, mesh)
    created.append(obj)
    collection.objects.link(obj)
    obj[PROP_FRAME] = entry.frame
    obj[PROP_MESH] = entry.mesh
    if entry.seconds is not None:
        obj[PROP_SECONDS] = entry.seconds
    if entry.world_from_canonical is not None:
        obj[PROP_WORLD_FROM_CANONICAL] = [float(x) for x in entry.world_from_canonical.ravel()]
    key_visibility(obj, entry.frame, end, created, current)
    if canonical:
        _place(obj, entry, created)
    return obj


class _Undo:
    """Everything a build creates, removed again (with a vertex colour material it made) on failure."""

    def __init__(self):
        self.created = []
        self.had_material = bpy.data.materials.get(MATERIAL_NAME) is not None

    def __enter__(self):
        return self.created

    def __exit__(self, kind, value, traceback):
        if kind is not None:
            blocks.remove(self.created)
            material = bpy.data.materials.get(MATERIAL_NAME)
            if not self.had_material and material is not None and material.users == 0:
                bpy.data.materials.remove(material)
        return False


def set_frame_range(scene, first, last):
    """The scene's frame range, in whichever order keeps start <= end on the way."""
    if first > scene.frame_end:
        scene.frame_end, scene.frame_start = last, first
    else:
        scene.frame_start, scene.frame_end = first, last


def build_sequence(sequence, name=None, parent_collection=None, scene=None):
    """One object per frame of `sequence` (from read_sequence) in a new collection named `name`
    (default: the sequence's), linked into `parent_collection` (default: the scene's collection);
    sets the scene's frame range to the sequence's. Returns a SequenceBuild(collection, objects in
    frame order). Every mesh file is read before anything is created; if anything fails, whatever
    was created is removed again and the error (SequenceError for a bad mesh file) propagates."""
    scene = scene or bpy.context.scene
    parent_collection = parent_collection or scene.collection
    meshes = read_meshes(sequence)
    canonical = sequence.coordinates == "canonical"
    frames = [entry.frame for entry in sequence.frames]
    users = collections.Counter(entry.mesh for entry in sequence.frames)

    with _Undo() as created:  # removed again, newest first, if anything below fails
        collection = bpy.data.collections.new(name or sequence.name)
        created.append(collection)
        prefix = collection.name  # Blender's unique name: a second import's objects follow it
        _tag(collection, sequence.path, sequence.coordinates, len(frames))
        datas, objects = {}, []
        for entry, (key_frames, _) in zip(sequence.frames, visibility_keys(frames)):
            label = f"{prefix} {entry.frame:06d}"
            mesh = datas.get(entry.mesh)
            if mesh is None:
                arrays = meshes.pop(entry.mesh, None) or _read_mesh(sequence, entry)
                stem = os.path.splitext(os.path.basename(entry.mesh))[0]
                mesh = _mesh(label if users[entry.mesh] == 1 else f"{prefix} {stem}", arrays, created)
                datas[entry.mesh] = mesh
                del arrays
            # As at the first frame, made current below.
            objects.append(_frame_object(collection, label, mesh, entry, canonical, key_frames[-1], frames[0],
                                         created))
        parent_collection.children.link(collection)
        set_frame_range(scene, frames[0], frames[-1])
        scene.frame_current = frames[0]
    return SequenceBuild(collection, objects)


def _tag(collection, path, coordinates, count):
    collection[PROP_SEQUENCE] = path
    collection[PROP_COORDINATES] = coordinates
    collection[PROP_FRAME_COUNT] = count


def _mesh(name, arrays, created):
    """A mesh datablock from read_ply's arrays (build.mesh.mesh_from_arrays), recorded in `created`."""
    mesh = mesh_from_arrays(name, arrays)
    created.append(mesh)
    return mesh


def _place(obj, entry, created):
    """A canonical frame's object: world_from_canonical as location, rotation and scale, set and keyed
    (constant) at its frame."""
    location, rotation, scale = decompose(entry.world_from_canonical)
    quaternion = Matrix(rotation.tolist()).to_quaternion()
    obj.rotation_mode = 'QUATERNION'
    obj.location, obj.rotation_quaternion, obj.scale = location.tolist(), quaternion, scale.tolist()
    frame = [entry.frame]
    blocks.keyframes(obj, "location", frame, [location], created)
    blocks.keyframes(obj, "rotation_quaternion", frame, [quaternion[:]], created)
    blocks.keyframes(obj, "scale", frame, [scale], created)


def _read_mesh(sequence, entry):
    """read_ply's arrays of one frame's mesh; the SequenceError names the sequence and the entry."""
    return read_frame_mesh(entry, f"{sequence.path}: frames[{entry.entry}] (frame {entry.frame})")


def _remove_object(obj):
    """An object of a sequence with its mesh and action when nothing else uses them."""
    mesh = obj.data
    anim = obj.animation_data
    action = anim.action if anim is not None else None
    bpy.data.objects.remove(obj)
    if mesh is not None and mesh.users == 0:
        bpy.data.meshes.remove(mesh)
    if action is not None and action.users == 0:
        bpy.data.actions.remove(action)


# ---------------------------------------------------------------------------------------------
# Growing a sequence while a dynamic job trains

def _same_path(a, b):
    return bool(a) and bool(b) and os.path.normcase(os.path.abspath(a)) == os.path.normcase(os.path.abspath(b))


class LiveSequence:
    """A job's sequence collection, filled one frame at a time (addon.jobs calls it from the tick).

    The collection carries the job folder (PROP_JOB) so that a resumed job finds it again, also in a
    later session. Frames are found by their objects' PROP_FRAME; the frame -> object name map is
    kept between calls and read again from the collection only when it no longer matches (objects
    added, removed or renamed by hand), so adding a frame touches its object and its predecessor's.
    """

    def __init__(self, collection, job_dir=""):
        self.name = collection.name
        self.job_dir = job_dir
        self._names = None   # {frame: object name}
        self._count = -1     # len(collection.objects) when _names was last right

    @classmethod
    def create(cls, name, parent, path, coordinates, job_dir, scene):
        """A new empty sequence collection in `parent`; it takes over the job folder from any older
        collection of a previous run of the same job in `scene` (which stays as it is)."""
        for old in _job_collections(job_dir, scene):
            del old[PROP_JOB]
        collection = bpy.data.collections.new(name)
        try:
            _tag(collection, path or "", coordinates, 0)
            collection[PROP_JOB] = os.path.abspath(job_dir)
            parent.children.link(collection)
        except BaseException:
            bpy.data.collections.remove(collection)
            raise
        return cls(collection, job_dir)

    @classmethod
    def find(cls, job_dir, scene):
        """The sequence collection of the job in `job_dir` linked in `scene`, or None."""
        found = _job_collections(job_dir, scene)
        return cls(found[-1], job_dir) if found else None

    @property
    def collection(self):
        collection = bpy.data.collections.get(self.name)
        if collection is None or not _same_path(collection.get(PROP_JOB), self.job_dir):
            found = [c for c in bpy.data.collections if _same_path(c.get(PROP_JOB), self.job_dir)]
            if not found:
                return None
            collection = found[-1]
            self.name, self._names = collection.name, None  # renamed by hand
        return collection

    def frames(self):
        """The frames the collection holds, sorted."""
        return sorted(self._index(self.collection))

    def _index(self, collection):
        if self._names is None or self._count != len(collection.objects):
            self._rescan(collection)
        return self._names

    def _rescan(self, collection):
        names = {}
        for obj in collection.objects:
            frame = obj.get(PROP_FRAME)
            if isinstance(frame, int):
                names[frame] = obj.name
        self._names, self._count = names, len(collection.objects)

    def _object(self, collection, frame):
        names = self._index(collection)
        name = names.get(frame)
        if name is None:
            return None
        obj = collection.objects.get(name)
        if obj is None or obj.get(PROP_FRAME) != frame:  # renamed by hand: read the collection again
            self._rescan(collection)
            obj = collection.objects.get(self._names[frame]) if frame in self._names else None
        return obj

    def add(self, entry, scene, arrays=None, canonical=False):
        """Add (or replace) the object of one frame: shown from its frame until the next frame the
        collection holds (one frame when it is the last); the previous frame's object is re-keyed to
        hide when this one appears. The scene's frame range becomes the collection's frames. The mesh
        is read first (`arrays`, else its file): a bad file raises SequenceError and changes nothing."""
        collection = self.collection
        if collection is None:
            raise SequenceError(f"the sequence collection of {self.job_dir} is gone")
        if arrays is None:
            arrays = read_frame_mesh(entry)
        frame = entry.frame
        old = self._object(collection, frame)
        frames = sorted(f for f in self._index(collection) if f != frame)
        i = bisect.bisect_left(frames, frame)
        previous = frames[i - 1] if i > 0 else None
        end = frames[i] if i < len(frames) else frame + 1
        # A new frame hides its predecessor from its frame on; a replaced one keeps its place.
        predecessor = self._object(collection, previous) if previous is not None and old is None else None
        label = f"{collection.name} {frame:06d}"
        current = scene.frame_current
        with _Undo() as created:
            mesh = _mesh(label, arrays, created)
            obj = _frame_object(collection, label, mesh, entry, canonical, end, current, created)
            if predecessor is not None:
                key_visibility(predecessor, previous, frame, created, current)
        if old is not None:  # a frame sent again: the new object takes the old one's place and name
            _remove_object(old)
            obj.name = mesh.name = label
            if obj.animation_data is not None and obj.animation_data.action is not None:
                obj.animation_data.action.name = f"{label} frames"
        names = self._names  # read (and checked) above, before this call's changes
        names[frame] = obj.name
        self._count = len(collection.objects)
        collection[PROP_FRAME_COUNT] = len(names)
        set_frame_range(scene, min(frame, frames[0]) if frames else frame,
                        max(frame, frames[-1]) if frames else frame)
        if not scene.frame_start <= scene.frame_current <= scene.frame_end:
            scene.frame_set(min(max(scene.frame_current, scene.frame_start), scene.frame_end))
        return obj

    def remove(self, frame, scene):
        """Remove one frame's object; its predecessor then shows until the frame after it."""
        collection = self.collection
        obj = self._object(collection, frame) if collection is not None else None
        if obj is None:
            return False
        frames = sorted(self._names)
        i = frames.index(frame)
        _remove_object(obj)
        del self._names[frame]
        self._count = len(collection.objects)
        collection[PROP_FRAME_COUNT] = len(self._names)
        predecessor = self._object(collection, frames[i - 1]) if i > 0 else None
        if predecessor is not None:
            end = frames[i + 1] if i + 1 < len(frames) else frames[i - 1] + 1
            key_visibility(predecessor, frames[i - 1], end, [], scene.frame_current)
        if len(frames) > 1:
            rest = frames[:i] + frames[i + 1:]
            set_frame_range(scene, rest[0], rest[-1])
        return True

    def sync(self, sequence, scene, remove_missing=False):
        """Make the collection hold the frames of `sequence` (read_sequence's): add those it lacks, one at
        a time (each complete or not at all), and with `remove_missing` remove those the file no longer
        lists. Returns the number of frames added."""
        collection = self.collection
        if collection is None:
            raise SequenceError(f"the sequence collection of {self.job_dir} is gone")
        collection[PROP_SEQUENCE] = sequence.path
        collection[PROP_COORDINATES] = sequence.coordinates
        wanted = {entry.frame for entry in sequence.frames}
        if remove_missing:
            for frame in [f for f in self._index(collection) if f not in wanted]:
                self.remove(frame, scene)
        added = 0
        for entry in sequence.frames:
            if entry.frame not in self._index(collection):
                self.add(entry, scene, _read_mesh(sequence, entry), sequence.coordinates == "canonical")
                added += 1
        frames = self.frames()
        if frames:
            set_frame_range(scene, frames[0], frames[-1])
        return added


def _job_collections(job_dir, scene):
    """The collections in `scene` that hold the live sequence of the job in `job_dir`."""
    return [c for c in scene.collection.children_recursive if _same_path(c.get(PROP_JOB), job_dir)]

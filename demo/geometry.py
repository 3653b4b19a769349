"""The demo's geometry (numpy only, no Blender): the one torus of the demo, the dynamic scene and
the sequence benchmark, the cameras' spiral and orientation, the normalisation of a mesh scene."""
import math

import numpy as np

MAJOR_RADIUS = 0.6
MINOR_RADIUS = 0.25
MAJOR_SEGMENTS = 96
MINOR_SEGMENTS = 48
CAMERA_DISTANCE = 3.0
ELEVATION_RANGE_DEG = (-40.0, 80.0)
MESH_DIAGONAL = 1.7


def torus_parameters(major_segments=MAJOR_SEGMENTS, minor_segments=MINOR_SEGMENTS):
    """The torus grid: each vertex's angle around the ring (u) and around the tube (v), flattened
    (vertex i * minor_segments + j), and the grid's quads (M, 4), closed in both directions."""
    u = np.arange(major_segments) * (2.0 * math.pi / major_segments)
    v = np.arange(minor_segments) * (2.0 * math.pi / minor_segments)
    uu, vv = np.meshgrid(u, v, indexing="ij")
    i = np.arange(major_segments)[:, None]
    j = np.arange(minor_segments)[None, :]
    i1 = (i + 1) % major_segments
    j1 = (j + 1) % minor_segments

    def index(a, b):
        return np.broadcast_to(a * minor_segments + b, (major_segments, minor_segments))

    quads = np.stack([index(i, j), index(i1, j), index(i1, j1), index(i, j1)], axis=-1)
    return uu.reshape(-1), vv.reshape(-1), quads.reshape(-1, 4)


def torus_mesh(major_radius=MAJOR_RADIUS, minor_radius=MINOR_RADIUS,
               major_segments=MAJOR_SEGMENTS, minor_segments=MINOR_SEGMENTS):
    """Vertices (N, 3) and outward-facing quads (M, 4) of a torus around +Z, centred at the origin: the
    one torus of the demo, the dynamic scene and the sequence benchmark."""
    u, v, quads = torus_parameters(major_segments, minor_segments)
    ring = major_radius + minor_radius * np.cos(v)
    vertices = np.stack([ring * np.cos(u), ring * np.sin(u), minor_radius * np.sin(v)], axis=-1)
    return vertices, quads


def torus_triangles(quads):
    """The quads (M, 4) split in two along their first diagonal: triangles (2M, 3), all first halves
    then all second halves."""
    return np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])


def camera_positions(count, distance=CAMERA_DISTANCE, elevation_range_deg=ELEVATION_RANGE_DEG):
    """`count` points spread evenly (Fibonacci spiral, equal area) over a band of the sphere."""
    lo, hi = (math.sin(math.radians(e)) for e in elevation_range_deg)
    golden = math.pi * (3.0 - math.sqrt(5.0))
    points = []
    for k in range(count):
        z = lo + (k + 0.5) / count * (hi - lo)
        elevation, azimuth = math.asin(z), k * golden
        points.append((distance * math.cos(elevation) * math.cos(azimuth),
                       distance * math.cos(elevation) * math.sin(azimuth),
                       distance * z))
    return np.array(points)


def look_at(position, target=(0.0, 0.0, 0.0), up=(0.0, 0.0, 1.0)):
    """Blender (OpenGL-axed) camera-to-world 4x4: the camera's -Z looks at `target`, +Y is up-ish."""
    position = np.asarray(position, dtype=float)
    back = position - np.asarray(target, dtype=float)
    back /= np.linalg.norm(back)
    right = np.cross(np.asarray(up, dtype=float), back)
    right /= np.linalg.norm(right)
    matrix = np.eye(4)
    matrix[:3, 0], matrix[:3, 1], matrix[:3, 2], matrix[:3, 3] = right, np.cross(back, right), back, position
    return matrix


def normalising_matrix(vertices, diagonal=MESH_DIAGONAL):
    """4x4 similarity (uniform scale, translation) putting the bounding box of `vertices` (N, 3) at the
    origin with the given diagonal."""
    vertices = np.asarray(vertices, dtype=np.float64)
    lo, hi = vertices.min(axis=0), vertices.max(axis=0)
    extent = float(np.linalg.norm(hi - lo))
    if not extent > 0.0:
        raise ValueError("the mesh has no extent (all its vertices coincide)")
    scale = diagonal / extent
    matrix = np.diag([scale, scale, scale, 1.0])
    matrix[:3, 3] = -scale * 0.5 * (lo + hi)
    return matrix

"""Zero level set extraction (block-wise marching cubes) and PLY output."""
import mcubes
import numpy as np
import torch


@torch.no_grad()
def extract_mesh(sdf_fn, resolution, bounds=(-1.0, 1.0), block=128, inside_fn=None, chunk=131072, check=None):
    """Vertices (V, 3) and faces (F, 3) of {sdf = 0} on a resolution^3 lattice spanning `bounds`.

    `sdf_fn` maps (N, 3) float tensors to (N,) SDF values (negative inside). The lattice is processed
    in blocks of `block`^3 cells that share their boundary samples, so memory stays bounded at any
    resolution; vertices on shared block faces are welded. Points where `inside_fn` is False are
    treated as empty space. `check()` is called before every chunk of SDF evaluations (a cancel
    request raises from it), so a large extraction stops within a chunk's time.
    """
    lo, hi = (np.full(3, bounds[0], float), np.full(3, bounds[1], float)) if np.isscalar(bounds[0]) else \
        (np.asarray(bounds[0], float), np.asarray(bounds[1], float))
    n = resolution + 1  # lattice points per axis
    spacing = (hi - lo) / resolution
    vertices, faces, count = [], [], 0
    for i0 in range(0, resolution, block):
        for j0 in range(0, resolution, block):
            for k0 in range(0, resolution, block):
                idx = [np.arange(s, min(s + block, resolution) + 1) for s in (i0, j0, k0)]
                axes = [torch.tensor(lo[a] + idx[a] * spacing[a], dtype=torch.float32) for a in range(3)]
                pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 3)
                # Only points inside the region are evaluated; the rest are empty space.
                inside = inside_fn(pts) if inside_fn is not None else torch.ones(len(pts), dtype=torch.bool)
                if not inside.any():
                    continue
                values = torch.full((len(pts),), float(spacing.max()))
                values[inside] = torch.cat([_checked(sdf_fn, p, check) for p in pts[inside].split(chunk)])
                volume = values.view(len(idx[0]), len(idx[1]), len(idx[2])).numpy().astype(np.float64)
                if volume.min() > 0 or volume.max() < 0:
                    continue
                # mcubes puts the outside (larger values) on the normals' side when fed -sdf.
                v, f = mcubes.marching_cubes(-volume, 0.0)
                if len(f) == 0:
                    continue
                vertices.append(v + np.array([i0, j0, k0]))
                faces.append(f + count)
                count += len(v)
    if not vertices:
        return np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64)
    vertices, faces = np.concatenate(vertices), np.concatenate(faces).astype(np.int64)
    # Weld the copies of seam vertices: they come from the same lattice edge and values, so they match.
    keys = np.round(vertices * 1024).astype(np.int64)
    _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    vertices, faces = vertices[first], inverse.reshape(-1)[faces]
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    return lo + vertices * spacing, faces


def _checked(sdf_fn, points, check):
    if check is not None:
        check()
    return sdf_fn(points)


def largest_component(vertices, faces):
    """The connected piece with the most faces (pieces joined by shared edges), vertices reindexed."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=False)
    labels = trimesh.graph.connected_component_labels(mesh.face_adjacency, node_count=len(faces))
    keep = faces[labels == np.bincount(labels).argmax()]
    used, inverse = np.unique(keep, return_inverse=True)
    return vertices[used], inverse.reshape(-1, 3)

"""Texture baking: UV unwrap (xatlas), rasterising the triangles in UV space, evaluating a colour
function at each covered texel's surface point, and dilating the charts so seams and mip levels do
not pick up background.

UVs here follow glTF: u along the image's columns, v along its rows from the top (OBJ flips v).
Texel (row i, column j) has its centre at uv ((j + 0.5) / size, (i + 0.5) / size).
"""
import numpy as np

RASTER_CHUNK = 1 << 20     # candidate texels examined at once while rasterising
COLOR_CHUNK = 1 << 14      # surface points per call of the colour function
EDGE_TOLERANCE = 0.75      # texels whose centre lies this close (in texels) outside a triangle are baked too


def unwrap_padding(size):
    """Empty texels kept between charts, so bilinear filtering and a few mip levels stay in a chart."""
    return max(2, int(round(size / 512)))


def unwrap(vertices, faces, size):
    """UV charts packed into one atlas for a `size` x `size` texture (xatlas).

    Returns (vertex_of, uv_faces, uvs): each UV vertex's index into `vertices` (seams split vertices),
    the faces over the UV vertices (same order as `faces`) and the UVs (N, 2) in [0, 1]."""
    import xatlas

    atlas = xatlas.Atlas()
    atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
    pack = xatlas.PackOptions()
    pack.resolution = int(size)
    pack.padding = unwrap_padding(size)
    pack.bilinear = True
    atlas.generate(xatlas.ChartOptions(), pack)
    if atlas.atlas_count != 1:  # the charts did not fit one atlas of that size: let xatlas choose the scale
        atlas = xatlas.Atlas()
        atlas.add_mesh(np.ascontiguousarray(vertices, dtype=np.float32), np.ascontiguousarray(faces, dtype=np.uint32))
        pack.resolution, pack.texels_per_unit = 0, 0.0
        atlas.generate(xatlas.ChartOptions(), pack)
    vertex_of, uv_faces, uvs = atlas[0]
    return vertex_of.astype(np.int64), uv_faces.astype(np.int64), np.clip(uvs.astype(np.float64), 0.0, 1.0)


def rasterize(uvs, faces, size, check=None):
    """Which triangle covers each texel, and where: (face (size, size) int32, -1 where none;
    barycentric (size, size, 3) float32). A texel whose centre lies inside no triangle but within
    EDGE_TOLERANCE texels of one takes that triangle's nearest point, so chart borders are baked whole;
    where triangles compete, the one the centre lies deepest inside wins. Vectorised over chunks of
    candidate texels (each triangle's bounding box); `check()` runs between chunks."""
    corners = np.asarray(uvs, dtype=np.float64)[faces] * size                       # (F, 3, 2): x, y in texels
    edge = np.roll(corners, -1, axis=1) - corners                                   # edge k: corner k -> k+1
    area2 = edge[:, 0, 0] * edge[:, 2, 1] * -1 + edge[:, 0, 1] * edge[:, 2, 0]      # 2 x signed area
    usable = np.abs(area2) > 1e-12
    lo = np.clip(np.floor(corners.min(1) - 0.5 - EDGE_TOLERANCE), 0, size - 1).astype(np.int64)
    hi = np.clip(np.ceil(corners.max(1) - 0.5 + EDGE_TOLERANCE), 0, size - 1).astype(np.int64)
    width, height = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
    counts = np.where(usable, width * height, 0)
    best = np.full(size * size, -np.inf, dtype=np.float32)
    face_of = np.full(size * size, -1, dtype=np.int32)
    weights = np.zeros((size * size, 3), dtype=np.float32)
    ends = np.cumsum(counts)
    start = 0
    while start < len(faces):
        if check is not None:
            check()
        base = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, base + RASTER_CHUNK, side="right")))
        ids = np.arange(start, stop)
        start = stop
        n = counts[ids]
        if n.sum() == 0:
            continue
        face = np.repeat(ids, n)
        local = np.arange(n.sum()) - np.repeat(np.cumsum(n) - n, n)
        x = lo[face, 0] + local % width[face]
        y = lo[face, 1] + local // width[face]
        point = np.stack([x + 0.5, y + 0.5], axis=1)
        # Signed distance (texels) of the centre to each edge's line, positive inside (either winding).
        sign = np.sign(area2[face])[:, None]
        rel = point[:, None, :] - corners[face]                                     # (n, 3, 2)
        e = edge[face]
        cross = (e[..., 0] * rel[..., 1] - e[..., 1] * rel[..., 0]) * sign          # (n, 3): 2 x sub-areas
        distance = cross / np.maximum(np.linalg.norm(e, axis=2), 1e-12)
        score = distance.min(axis=1)
        keep = score >= -EDGE_TOLERANCE
        face, x, y, score, cross = face[keep], x[keep], y[keep], score[keep], cross[keep]
        # Sub-area opposite corner k is the one of edge k+1: barycentric k = cross[k+1] / area.
        bary = np.clip(np.roll(cross, -1, axis=1), 0.0, None)
        bary /= np.maximum(bary.sum(axis=1, keepdims=True), 1e-20)
        texel = y * size + x
        order = np.lexsort((score, texel))                                          # the deepest last per texel
        texel, last = texel[order], np.append(texel[order][1:] != texel[order][:-1], True)
        texel, face, score, bary = texel[last], face[order][last], score[order][last], bary[order][last]
        better = score > best[texel]
        texel = texel[better]
        best[texel], face_of[texel], weights[texel] = score[better], face[better], bary[better]
    return face_of.reshape(size, size), weights.reshape(size, size, 3)


def bake(vertices, normals, faces, face_of, weights, color_fn, check=None, progress=None):
    """The colour of every covered texel: `color_fn(points, normals)` (float (n, 3) arrays in the
    mesh's coordinates -> colours (n, 3) in 0-1) at its surface point, with the interpolated vertex
    normal. Returns the image (size, size, 3) float32 (0 where uncovered) and the covered mask.
    Evaluated COLOR_CHUNK points at a time; `check()` before each, `progress(done, total)` after."""
    size = face_of.shape[0]
    covered = face_of >= 0
    texels = np.flatnonzero(covered)
    flat_face, flat_weight = face_of.reshape(-1), weights.reshape(-1, 3)
    image = np.zeros((size * size, 3), dtype=np.float32)
    for begin in range(0, len(texels), COLOR_CHUNK):
        if check is not None:
            check()
        chunk = texels[begin:begin + COLOR_CHUNK]
        corners = faces[flat_face[chunk]]
        w = flat_weight[chunk].astype(np.float64)[:, :, None]
        points = (vertices[corners] * w).sum(axis=1)
        normal = (normals[corners] * w).sum(axis=1)
        normal /= np.maximum(np.linalg.norm(normal, axis=1, keepdims=True), 1e-12)
        image[chunk] = np.clip(np.asarray(color_fn(points, normal), dtype=np.float32), 0.0, 1.0)
        if progress is not None:
            progress(min(begin + COLOR_CHUNK, len(texels)), len(texels))
    return image.reshape(size, size, 3), covered


NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def dilate(image, covered, pixels=None):
    """Grow every chart outwards: `pixels` rounds (default max(8, size / 128)), each giving the
    uncovered texels next to filled ones the mean of their filled neighbours (8-neighbourhood); what
    is still empty then takes the mean colour of the charts. Works on the front only, so a round costs
    what its border does, not the whole image."""
    size_y, size_x = covered.shape
    pixels = max(8, size_x // 128) if pixels is None else pixels
    width = size_x + 2                                   # one empty texel of padding all round
    known = np.zeros((size_y + 2, width), dtype=bool)
    known[1:-1, 1:-1] = covered
    colors = np.zeros((size_y + 2, width, 3), dtype=np.float32)
    colors[1:-1, 1:-1] = image
    known, colors = known.reshape(-1), colors.reshape(-1, 3)
    inside = np.zeros((size_y + 2, width), dtype=bool)
    inside[1:-1, 1:-1] = True
    inside = inside.reshape(-1)
    offsets = np.array([dy * width + dx for dy, dx in NEIGHBOURS])
    front = np.flatnonzero(known)
    for _ in range(pixels):
        candidates = np.unique((front[:, None] + offsets).reshape(-1))
        candidates = candidates[inside[candidates] & ~known[candidates]]
        if len(candidates) == 0:
            break
        around = candidates[:, None] + offsets                                     # (n, 8)
        filled = known[around]
        total = (colors[around] * filled[..., None]).sum(axis=1)
        colors[candidates] = total / filled.sum(axis=1, keepdims=True)
        known[candidates] = True
        front = candidates
    result = colors.reshape(size_y + 2, width, 3)[1:-1, 1:-1].copy()
    done = known.reshape(size_y + 2, width)[1:-1, 1:-1]
    if covered.any() and not done.all():
        result[~done] = image[covered].mean(axis=0)
    return result


def sample(texture, uvs):
    """The texel of `texture` (size, size, channels) under each uv (nearest; glTF's orientation)."""
    height, width = texture.shape[:2]
    column = np.clip((np.asarray(uvs)[:, 0] * width).astype(np.int64), 0, width - 1)
    row = np.clip((np.asarray(uvs)[:, 1] * height).astype(np.int64), 0, height - 1)
    return texture[row, column]

"""`python -m bench.pose_compare DATASET RIG` (in the .venv): a calibrated rig against a given one.

The calibrated camera centres are mapped onto the given ones by the similarity (Umeyama) that fits
them best; errors are then measured in the given rig's world: camera-centre error as a share of the
region's radius (the given rig's own region when it has one, else the calibrated region mapped over),
rotation error in degrees, the focal length's relative error, and the calibrated region's radius over
the given region's. Views are paired by image name. Prints one JSON line.
"""
import json
import os
import sys

import numpy as np

from engine.io.region import initial_region
from engine.io.rig import load_rig


def similarity(source, target):
    """(scale, R, t) with target ~ scale * R @ source + t (Umeyama, least squares)."""
    ms, mt = source.mean(0), target.mean(0)
    a, b = source - ms, target - mt
    U, S, Vt = np.linalg.svd(b.T @ a / len(a))
    D = np.eye(3)
    if np.linalg.det(U @ Vt) < 0:
        D[2, 2] = -1
    R = U @ D @ Vt
    scale = np.trace(np.diag(S) @ D) / a.var(0).sum()
    return scale, R, mt - scale * R @ ms


def radius_of(matrix):
    return abs(np.linalg.det(np.asarray(matrix, dtype=float)[:3, :3])) ** (1 / 3)


def compare(dataset, rig_path):
    found, given = load_rig(dataset), load_rig(rig_path)
    by_name = {os.path.splitext(os.path.basename(v.image_path))[0]: v for v in given.views}
    pairs = [(v, by_name[v.name]) for v in found.views if v.name in by_name]
    if len(pairs) < 3:
        raise SystemExit(f"only {len(pairs)} views of {dataset} are in {rig_path}")
    A = np.array([f.c2w[:3, 3] for f, _ in pairs])
    B = np.array([g.c2w[:3, 3] for _, g in pairs])
    scale, R, t = similarity(A, B)
    error = np.linalg.norm((scale * (R @ A.T)).T + t - B, axis=1)
    region, automatic, _ = initial_region(given)
    calibrated_radius = scale * radius_of(found.normalization)
    radius = calibrated_radius if automatic else radius_of(region)
    rotation = [np.degrees(np.arccos(np.clip((np.trace((R @ f.c2w[:3, :3]).T @ g.c2w[:3, :3]) - 1) / 2, -1, 1)))
                for f, g in pairs]
    focal = [abs(f.K[0, 0] * g.width / f.width - g.K[0, 0]) / g.K[0, 0] for f, g in pairs]
    return {"pairs": len(pairs), "centre_error_median": float(np.median(error) / radius),
            "centre_error_max": float(error.max() / radius), "rotation_error_median": float(np.median(rotation)),
            "rotation_error_max": float(np.max(rotation)), "focal_error": float(np.median(focal)),
            "region_ratio": float(calibrated_radius / radius_of(region)), "given_region_automatic": automatic}


if __name__ == "__main__":
    print(json.dumps(compare(sys.argv[1], sys.argv[2])))

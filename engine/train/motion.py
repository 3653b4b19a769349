"""Rigid motions of dynamic scenes (NeuS2's global transformation prediction).

Frame i's rigid transform (R_i, T_i) relative to frame i-1 maps a point of frame i into frame i-1:
    x_{i-1} = R_i (x_i + T_i).
Chained back to the canonical frame (the first trained), x_c = R^c_i (x_i + T^c_i) with
    R^c_i = R^c_{i-1} R_i,    T^c_i = T_i + R_i^{-1} T^c_{i-1}.
All of this is in the engine's normalised space (the region of interest is the unit sphere); the
functions take numpy arrays or torch tensors alike where they only multiply.
"""
import math

import numpy as np
import torch


def compose(canonical_rotation, canonical_translation, rotation, translation):
    """(R^c_i, T^c_i) from frame i-1's canonical transform and frame i's relative one."""
    return canonical_rotation @ rotation, translation + rotation.T @ canonical_translation


def to_canonical(points, rotation, translation):
    """x_c = R (x + T) for points (N, 3), row vectors."""
    return (points + translation) @ rotation.T


def from_canonical(points, rotation, translation):
    """x = R^T x_c - T: the inverse of to_canonical."""
    return points @ rotation - translation


def canonical_from_frame(rotation, translation):
    """The 4x4 matrix of x -> R (x + T)."""
    m = np.eye(4)
    m[:3, :3] = rotation
    m[:3, 3] = rotation @ translation
    return m


def world_from_canonical(rotation, translation, center, radius):
    """The 4x4 map, in WORLD units, from the canonical frame's placement of the object to frame i's:
    normalised coordinates are (world - center) / radius, and frame i's point is R^T x_c - T."""
    rotation, center = np.asarray(rotation, dtype=float), np.asarray(center, dtype=float)
    m = np.eye(4)
    m[:3, :3] = rotation.T
    m[:3, 3] = center - rotation.T @ center - radius * np.asarray(translation, dtype=float)
    return m


def skew(w):
    """The cross-product matrix of a 3-vector (torch), so that skew(w) @ v = w x v."""
    zero = torch.zeros((), dtype=w.dtype, device=w.device)
    return torch.stack([torch.stack([zero, -w[2], w[1]]),
                        torch.stack([w[2], zero, -w[0]]),
                        torch.stack([-w[1], w[0], zero])])


def axis_angle_to_matrix(w):
    """The rotation exp(skew(w)) of an axis-angle vector (torch, differentiable, exact at w = 0)."""
    return torch.linalg.matrix_exp(skew(w))


def matrix_to_axis_angle(rotation):
    """The axis-angle vector of a rotation matrix (numpy), the inverse of axis_angle_to_matrix for
    angles below pi."""
    rotation = np.asarray(rotation, dtype=float)
    angle = rotation_angle(rotation)
    if angle < 1e-8:
        return np.zeros(3)
    axis = np.array([rotation[2, 1] - rotation[1, 2], rotation[0, 2] - rotation[2, 0], rotation[1, 0] - rotation[0, 1]])
    norm = np.linalg.norm(axis)
    if norm < 1e-8:  # angle ~ pi: the axis from the symmetric part
        values, vectors = np.linalg.eigh((rotation + rotation.T) / 2)
        return vectors[:, np.argmax(values)] * angle
    return axis / norm * angle


def rotation_angle(rotation):
    """The angle (radians) of a rotation matrix."""
    cos = (np.trace(np.asarray(rotation, dtype=float)) - 1.0) / 2.0
    return float(math.acos(min(1.0, max(-1.0, cos))))


def rotation_error_deg(predicted, truth):
    """The angle, in degrees, of the rotation between two rotation matrices."""
    return math.degrees(rotation_angle(np.asarray(predicted, dtype=float).T @ np.asarray(truth, dtype=float)))

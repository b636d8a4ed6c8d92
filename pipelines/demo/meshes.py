"""Extruded digit meshes: a glyph's pixel mask extruded to a closed prism, distorted, saved as .obj/.off/.ply/.stl."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.demo.glyphs import digit_fonts, glyph_mask

MESH_RESOLUTION = 24
"""Side of the glyph mask that is extruded (pixels); each pixel becomes a column of the prism."""

MESH_FORMATS: tuple[str, ...] = (".obj", ".off", ".ply", ".stl")
"""File formats, used in turn, so every mesh reader is exercised."""


def extrude_mask(mask: np.ndarray, depth: float) -> tuple[np.ndarray, np.ndarray]:
    """Extrude a binary mask to a closed triangle mesh: a top and a bottom quad per pixel, and a wall on every edge
    between a filled and an empty pixel. Faces wind counter-clockwise seen from outside.

    Args:
        mask: bool (H, W), row 0 at the top.
        depth: thickness in pixel units.

    Returns:
        vertices float64 (V, 3) with x to the right, y up and z out of the mask's plane; faces int64 (F, 3).
    """
    H, W = mask.shape
    grid = (H + 1) * (W + 1)

    def vid(i: np.ndarray, j: np.ndarray, layer: int) -> np.ndarray:
        return layer * grid + i * (W + 1) + j

    i, j = np.nonzero(mask)
    # Corners of pixel (i, j) seen from +z: a top-left, b top-right, c bottom-right, d bottom-left; d->c->b->a is CCW.
    a, b, c, d = (i, j), (i, j + 1), (i + 1, j + 1), (i + 1, j)
    faces = [np.stack([vid(*d, 1), vid(*c, 1), vid(*b, 1)], 1), np.stack([vid(*d, 1), vid(*b, 1), vid(*a, 1)], 1),
             np.stack([vid(*d, 0), vid(*b, 0), vid(*c, 0)], 1), np.stack([vid(*d, 0), vid(*a, 0), vid(*b, 0)], 1)]
    padded = np.pad(mask, 1)
    # A wall on edge p->q of the CCW loop has the glyph on its left, so (p0, q0, q1) faces outwards.
    for (di, dj), p, q in (((1, 0), d, c), ((0, 1), c, b), ((-1, 0), b, a), ((0, -1), a, d)):
        open_side = ~padded[i + 1 + di, j + 1 + dj]
        p_i, p_j, q_i, q_j = p[0][open_side], p[1][open_side], q[0][open_side], q[1][open_side]
        p0, q0, p1, q1 = vid(p_i, p_j, 0), vid(q_i, q_j, 0), vid(p_i, p_j, 1), vid(q_i, q_j, 1)
        faces += [np.stack([p0, q0, q1], 1), np.stack([p0, q1, p1], 1)]
    faces_arr = np.concatenate(faces).astype(np.int64)
    used, remapped = np.unique(faces_arr, return_inverse=True)
    layer, rest = np.divmod(used, grid)
    row, col = np.divmod(rest, W + 1)
    vertices = np.stack([col, H - row, layer * depth], 1).astype(np.float64)
    return vertices, remapped.reshape(-1, 3)


def write_mesh(path: Path, digit: int, rng: np.random.Generator) -> Path:
    """Extrude ``digit`` in a random font and save it at ``path`` (format from the suffix).

    Distortions: font, thickness 10-40% of the glyph's height, a slant (shear up to 0.3), an in-plane rotation of up to
    20 degrees and a tilt of up to 15 degrees about each in-plane axis; the mesh is centred and scaled into the unit
    sphere.
    """
    fonts = digit_fonts()
    mask = glyph_mask(digit, fonts[rng.integers(len(fonts))], MESH_RESOLUTION, fill=0.9)
    vertices, faces = extrude_mask(mask, depth=float(rng.uniform(0.1, 0.4)) * MESH_RESOLUTION)
    vertices = vertices - vertices.mean(0)
    shear = np.eye(3)
    shear[0, 1] = rng.uniform(-0.3, 0.3)
    angles = np.deg2rad([rng.uniform(-15, 15), rng.uniform(-15, 15), rng.uniform(-20, 20)])
    vertices = vertices @ (_rotation(angles) @ shear).T
    vertices /= np.linalg.norm(vertices, axis=1).max()
    return save_mesh(path, vertices, faces)


def save_mesh(path: Path, vertices: np.ndarray, faces: np.ndarray) -> Path:
    """Write a triangle mesh as ASCII .obj, .off, .ply or .stl (from the suffix).

    Args:
        vertices: float (V, 3).
        faces: int (F, 3) vertex indices, counter-clockwise seen from outside.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    _WRITERS[path.suffix.lower()](path, vertices, faces)
    return path


def _rotation(angles: np.ndarray) -> np.ndarray:
    """float64 (3, 3): rotation about x, then y, then z by ``angles`` (radians)."""
    cx, cy, cz = np.cos(angles)
    sx, sy, sz = np.sin(angles)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _write_obj(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    lines = [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices] + [f"f {a} {b} {c}" for a, b, c in faces + 1]
    path.write_text("\n".join(lines) + "\n")


def _write_off(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    lines = ["OFF", f"{len(vertices)} {len(faces)} 0"]
    lines += [f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices] + [f"3 {a} {b} {c}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def _write_ply(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    header = ["ply", "format ascii 1.0", f"element vertex {len(vertices)}", "property float x", "property float y",
              "property float z", f"element face {len(faces)}", "property list uchar int vertex_indices", "end_header"]
    lines = header + [f"{x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices] + [f"3 {a} {b} {c}" for a, b, c in faces]
    path.write_text("\n".join(lines) + "\n")


def _write_stl(path: Path, vertices: np.ndarray, faces: np.ndarray) -> None:
    tri = vertices[faces]
    normals = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    lines = ["solid digit"]
    for n, (p, q, r) in zip(normals, tri):
        lines += [f"facet normal {n[0]:.6f} {n[1]:.6f} {n[2]:.6f}", "outer loop"]
        lines += [f"vertex {v[0]:.6f} {v[1]:.6f} {v[2]:.6f}" for v in (p, q, r)] + ["endloop", "endfacet"]
    path.write_text("\n".join(lines + ["endsolid digit"]) + "\n")


_WRITERS = {".obj": _write_obj, ".off": _write_off, ".ply": _write_ply, ".stl": _write_stl}

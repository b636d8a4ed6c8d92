from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from extractors import MediaError, create_extractor, default_extractor
from extractors.mesh import (
    ZERNIKE_ORDERS,
    camera_directions,
    contour_length,
    disk_grid,
    dodecahedron_views,
    zernike_basis,
)

o3d = pytest.importorskip("open3d")

RES = 64  # silhouettes of the fast tests; one test runs the paper's 256


@pytest.fixture(scope="module")
def lfd():
    return create_extractor("lightfield", resolution=RES)


def _descriptor(extractor, path: Path) -> np.ndarray:
    return extractor([extractor.load(path)])[0]


def _mesh(vertices: np.ndarray, triangles: np.ndarray):
    return o3d.geometry.TriangleMesh(o3d.utility.Vector3dVector(vertices), o3d.utility.Vector3iVector(triangles))


@pytest.fixture(scope="module")
def l_shape(tmp_path_factory) -> tuple[Path, np.ndarray, np.ndarray]:
    """An asymmetric L-shaped prism (so views differ), written as .ply; returns (path, vertices, triangles)."""
    a = o3d.geometry.TriangleMesh.create_box(1.0, 0.3, 0.4)
    b = o3d.geometry.TriangleMesh.create_box(0.3, 0.8, 0.4)
    mesh = a + b
    path = tmp_path_factory.mktemp("mesh") / "l.ply"
    o3d.io.write_triangle_mesh(str(path), mesh)
    return path, np.asarray(mesh.vertices).copy(), np.asarray(mesh.triangles).copy()


def test_lightfield_is_the_default_mesh_extractor_with_4700_values():
    assert default_extractor("mesh") == "lightfield"
    assert create_extractor("lightfield").dim == 10 * 10 * 47 == 4700


def test_zernike_orders_one_to_ten_with_even_n_minus_m_are_35():
    naive = [(n, m) for n in range(1, 11) for m in range(0, n + 1) if (n - m) % 2 == 0]
    assert list(ZERNIKE_ORDERS) == naive and len(naive) == 35


def test_vectorised_zernike_moments_match_a_naive_per_pixel_loop():
    R = 16
    rng = np.random.default_rng(0)
    grid = disk_grid(R)
    S = (rng.random((2, len(grid.x))) > 0.5).astype(np.float32)
    fast = S @ zernike_basis(R) * (2.0 / R) ** 2
    for k, (n, m) in enumerate(ZERNIKE_ORDERS):
        naive = np.zeros(2, complex)
        for p, (x, y) in enumerate(zip(grid.x, grid.y)):
            rho, theta = math.hypot(x, y), math.atan2(y, x)
            radial = sum((-1) ** s * math.factorial(n - s) * rho ** (n - 2 * s)
                         / (math.factorial(s) * math.factorial((n + m) // 2 - s) * math.factorial((n - m) // 2 - s))
                         for s in range((n - m) // 2 + 1))
            naive += S[:, p] * (n + 1) / math.pi * radial * complex(math.cos(m * theta), -math.sin(m * theta))
        np.testing.assert_allclose(fast[:, k], naive * (2.0 / R) ** 2, rtol=1e-4, atol=1e-6)


def test_contour_length_equals_skimage_find_contours_total_length():
    measure = pytest.importorskip("skimage.measure")
    rng = np.random.default_rng(1)
    images = np.pad(rng.random((3, 20, 20)) > 0.6, ((0, 0), (1, 1), (1, 1)))
    expected = [sum(np.linalg.norm(np.diff(c, axis=0), axis=1).sum() for c in measure.find_contours(im.astype(float),
                                                                                                    0.5))
                for im in images]
    np.testing.assert_allclose(contour_length(images), expected, rtol=1e-9)


def test_cameras_are_dodecahedron_vertices_and_the_100_views_are_spread():
    views = dodecahedron_views()
    both = np.concatenate([views, -views])
    cos = np.sort(both @ both.T, axis=1)[:, -2]  # nearest other vertex
    assert len(views) == 10 and np.allclose(cos, math.sqrt(5) / 3)  # dodecahedron: neighbours 41.8 degrees apart
    d = camera_directions()
    all_cameras = np.concatenate([d, -d])
    gram = all_cameras @ all_cameras.T
    np.fill_diagonal(gram, -1)
    assert d.shape == (100, 3) and np.degrees(np.arccos(gram.max())) > 8.0


def test_a_sphere_has_round_silhouettes(lfd, tmp_path):
    path = tmp_path / "sphere.ply"
    o3d.io.write_triangle_mesh(str(path), o3d.geometry.TriangleMesh.create_sphere(radius=3.0, resolution=40))
    S = lfd.silhouettes(lfd.load(path))
    F = lfd.silhouette_features(S)
    np.testing.assert_allclose(S.sum(axis=1), math.pi * (RES / 2) ** 2, rtol=0.01)  # the whole unit disk
    assert F[:, :35].max() < 0.05  # a full disk is orthogonal to every Zernike polynomial of order >= 1
    assert F[:, 35:45].max() < 0.01  # constant centroid distance: no Fourier energy
    assert F[:, 45].max() < 0.15 and F[:, 46].min() > 0.85  # eccentricity ~ 0, compactness ~ 1


def test_translated_and_scaled_mesh_gives_the_same_descriptor(lfd, l_shape, tmp_path):
    path, V, T = l_shape
    moved = tmp_path / "moved.ply"
    o3d.io.write_triangle_mesh(str(moved), _mesh(V * 7.5 + np.array([100.0, -20.0, 3.0]), T))
    base, other = _descriptor(lfd, path), _descriptor(lfd, moved)
    assert np.linalg.norm(other - base) <= 1e-3 * np.linalg.norm(base)


@pytest.mark.parametrize("ext", [".obj", ".off", ".stl"])
def test_the_same_mesh_in_another_format_gives_the_same_descriptor(lfd, l_shape, tmp_path, ext):
    path, V, T = l_shape
    mesh = _mesh(V, T)
    mesh.compute_triangle_normals()  # STL stores one normal per triangle
    other = tmp_path / f"l{ext}"
    o3d.io.write_triangle_mesh(str(other), mesh)
    base = _descriptor(lfd, path)
    assert np.linalg.norm(_descriptor(lfd, other) - base) <= 1e-3 * np.linalg.norm(base)


def test_a_rotated_mesh_gives_a_different_descriptor(lfd, l_shape, tmp_path):
    """The concatenated descriptor is not rotation invariant (the original matching minimises over rotations)."""
    path, V, T = l_shape
    c, s = math.cos(0.7), math.sin(0.7)
    rotated = tmp_path / "rotated.ply"
    o3d.io.write_triangle_mesh(str(rotated), _mesh(V @ np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]]).T, T))
    base = _descriptor(lfd, path)
    assert np.linalg.norm(_descriptor(lfd, rotated) - base) > 0.05 * np.linalg.norm(base)


def test_descriptor_is_deterministic(lfd, l_shape):
    np.testing.assert_array_equal(_descriptor(lfd, l_shape[0]), _descriptor(lfd, l_shape[0]))


@pytest.mark.parametrize("resolution", [RES, pytest.param(256, marks=pytest.mark.slow)])
def test_a_real_modelnet_mesh_gives_finite_values_in_their_ranges(shared_data, resolution):
    extractor = create_extractor("lightfield", resolution=resolution)
    path = shared_data / "meshes" / "ModelNet40" / "monitor" / "test" / "monitor_0466.off"
    X = extractor([extractor.load(path)])
    per_view = X.reshape(100, 47)
    assert X.shape == (1, 4700) and np.isfinite(X).all()
    assert (per_view[:, :45] >= 0).all() and (per_view[:, 45] <= 1).all()  # magnitudes, eccentricity in [0, 1]
    assert (per_view[:, 46] > 0).all() and (per_view[:, 46] <= 1.2).all()  # compactness (digital circles: ~0.9)


def test_an_off_file_with_counts_on_the_header_line_loads_as_modelnet_writes_it(lfd, tmp_path):
    box = o3d.geometry.TriangleMesh.create_box(1.0, 2.0, 3.0)
    V, T = np.asarray(box.vertices), np.asarray(box.triangles)
    body = [" ".join(map(str, v)) for v in V] + ["3 " + " ".join(map(str, t)) for t in T]
    standard, merged = tmp_path / "standard.off", tmp_path / "merged.off"
    standard.write_text("\n".join(["OFF", f"{len(V)} {len(T)} 0", *body]) + "\n")
    merged.write_text("\n".join([f"OFF{len(V)} {len(T)} 0", *body]) + "\n")
    np.testing.assert_array_equal(_descriptor(lfd, merged), _descriptor(lfd, standard))


@pytest.mark.parametrize("kind, content, reason", [
    ("no-faces", "OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n", "no faces"),
    ("no-vertices", "OFF\n0 0 0\n", "no vertices"),
    ("nan-vertex", "OFF\n3 1 0\nnan 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "NaN"),
    ("degenerate", "OFF\n3 1 0\n0 0 0\n1 0 0\n2 0 0\n3 0 1 2\n", "zero area"),
    ("index-out-of-range", "OFF\n3 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 7\n", "out of range"),
    ("lying-header", "OFF\n100000000 1 0\n0 0 0\n1 0 0\n0 1 0\n3 0 1 2\n", "header declares"),
    ("truncated", "OFF\n4 2 0\n0 0 0\n1 0 0\n0 1 0\n0 0 1\n3 0 1 2\n", "header declares"),
])
def test_a_bad_mesh_raises_media_error(lfd, tmp_path, kind, content, reason):
    path = tmp_path / f"{kind}.off"
    path.write_text(content)
    with pytest.raises(MediaError, match=reason) as info:
        lfd.load(path)
    assert str(path) in str(info.value)


def test_a_binary_stl_whose_triangle_count_lies_is_refused_before_reading(lfd, tmp_path):
    path = tmp_path / "lies.stl"
    path.write_bytes(b" " * 80 + (10**9).to_bytes(4, "little") + bytes(50))
    with pytest.raises(MediaError, match="binary STL"):
        lfd.load(path)


@pytest.mark.parametrize("ext, how", [(".ply", "its header declares 24"), (".stl", "its header declares 24"),
                                      (".obj", "24 triangles read")])
def test_a_mesh_of_more_than_max_faces_triangles_is_refused_naming_the_limit(l_shape, tmp_path, ext, how):
    path = tmp_path / f"l{ext}"  # the L prism: 24 triangles; PLY and binary STL declare them, OBJ does not
    o3d.io.write_triangle_mesh(str(path), _mesh(l_shape[1], l_shape[2]).compute_triangle_normals())  # STL needs them
    with pytest.raises(MediaError, match=rf"max_faces=23 \({how}\)") as info:
        create_extractor("lightfield", resolution=RES, max_faces=23).load(path)
    assert str(path) in str(info.value) and "--set max_faces" in info.value.hint
    assert len(create_extractor("lightfield", resolution=RES, max_faces=24).load(path).triangles) == 24

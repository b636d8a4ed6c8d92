"""3D mesh extractors: the Light Field Descriptor (``lightfield``, the default for meshes, 4700-d).

Reference: D.-Y. Chen, X.-P. Tian, Y.-T. Shen and M. Ouhyoung, "On Visual Similarity Based 3D Model Retrieval",
Computer Graphics Forum (Eurographics) 22(3), 2003. The layout follows ../shared/specs/extractors.md:

1. The mesh is normalised: its surface centroid (area-weighted, so the tessellation and the file format do not move
   it) goes to the origin and the vertex farthest from it to distance 1 (the unit sphere).
2. Cameras sit on the 20 vertices of a regular dodecahedron and look at the centre with an orthographic projection;
   opposite vertices see mirror images, so each light field keeps 10 views (one per antipodal pair, fixed order).
3. Ten light fields: the dodecahedron under 10 fixed rotations (:data:`LIGHT_FIELD_ROTATIONS`, the identity first),
   chosen once by a greedy max-min search over random rotations so that the 200 camera directions are at least 8.0
   degrees apart.
4. A silhouette is ``resolution x resolution`` pixels (256 as in the paper) over the square ``[-1, 1]^2``. Only the
   pixels inside the inscribed disk can be hit (the mesh lies in the unit sphere), so one ray per disk pixel is cast,
   all 100 views in ONE call to open3d's ``RaycastingScene.test_occlusions`` (an any-hit query: 30% faster than
   ``cast_rays``, and the silhouette needs no depth).
5. Per silhouette, 47 numbers in this order: the magnitudes of the 35 Zernike moments of orders n = 1..10
   (0 <= m <= n, n - m even: 1+2+2+3+3+4+4+5+5+6 = 35) on the unit disk of the image (the basis is tabulated once per
   resolution, so the 100 x 35 moments are one matrix product); the magnitudes of the Fourier coefficients 1..10 of the
   centroid-distance signature of the outer contour of the largest 8-connected region, holes filled (128 points
   equally spaced along the contour, divided by the DC coefficient as in Zhang and Lu's Fourier shape descriptor); the
   eccentricity ``sqrt(1 - lambda_min / lambda_max)`` of the silhouette's second central moments; the compactness
   ``4 pi area / perimeter^2`` (perimeter: the marching-squares length of all contours, holes included).
6. Output: ``[light field][view][47]`` flattened, 10 x 10 x 47 = 4700 float32.

What the descriptor is invariant to: translation and uniform scale (step 1), the file format, and rotations of a view in
its image plane (every per-silhouette number is). It is NOT invariant to rotations of the mesh: the original tool
compares two models by the minimum distance over the 60 rotations of the dodecahedron, while the feature here is the
concatenation, as the benchmarks used it. Silhouettes are not quantised to 8 bits as in the original tool.

An empty silhouette (a flat mesh seen edge-on) gives 47 zeros. Loading uses open3d and, where open3d reads no
geometry (e.g. ModelNet .off files whose first line is ``OFF490 518 0``), trimesh. A mesh of more than ``max_faces``
triangles (500,000; ModelNet's CAD models have a few thousand to tens of thousands) is refused, from the header when
it declares the count: memory (about 1.1 KB per triangle, the ray-casting scene included) and time grow with it. The
limit only refuses files, so it is not part of the key.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from extractors.base import Extractor, ExtractorConfig, check_finite, require
from extractors.errors import MediaError
from extractors.registry import register_extractor

#: (w, x, y, z) unit quaternions of the 10 light fields' rotations (see the module docstring, step 3).
LIGHT_FIELD_ROTATIONS = np.array([
    [1.0, 0.0, 0.0, 0.0],
    [0.68565426, 0.42594253, 0.26623387, -0.52684981],
    [0.25894113, 0.38701514, -0.87325479, 0.14350907],
    [0.02290953, -0.58365877, -0.37303607, 0.72087563],
    [0.63454397, 0.59043866, -0.37220298, -0.33196548],
    [0.38071795, 0.50415949, -0.13178228, -0.76387858],
    [0.74544459, 0.08722514, 0.61426629, -0.2436823],
    [0.87526334, -0.24195519, -0.3774291, 0.18143608],
    [0.35613892, -0.356599, 0.86126876, 0.06494881],
    [0.23629129, 0.17848434, 0.56649974, 0.76901743],
])

ZERNIKE_ORDERS: tuple[tuple[int, int], ...] = tuple(
    (n, m) for n in range(1, 11) for m in range(n + 1) if (n - m) % 2 == 0
)
NUM_FOURIER = 10
FEATURES_PER_VIEW = len(ZERNIKE_ORDERS) + NUM_FOURIER + 2  # 35 + 10 + eccentricity + compactness = 47
NUM_LIGHT_FIELDS = len(LIGHT_FIELD_ROTATIONS)
VIEWS_PER_LIGHT_FIELD = 10


@dataclasses.dataclass(frozen=True)
class LightFieldConfig(ExtractorConfig):
    """Light Field Descriptor; the defaults are Chen et al. (2003)."""

    resolution: int = 256  # silhouette side in pixels (§3: 256 x 256)
    contour_points: int = 128  # samples of the centroid-distance signature along the contour (Zhang and Lu)
    max_faces: int = 500_000  # meshes of more triangles are refused (about 1.1 KB of memory per triangle, and time)

    extractor = "lightfield"
    # resolution: the cached rays of the 100 views take 100 x 0.79 R^2 x 24 bytes (124 MB at 256, 500 MB at 512);
    # contour_points: the Fourier coefficients 1..10 need more than 2 x 10 samples
    bounds = {"resolution": (16, 512), "contour_points": (2 * NUM_FOURIER + 2, 4096), "max_faces": (1, 1 << 31)}


class Mesh(NamedTuple):
    """A normalised triangle mesh: float32 vertices ``(V, 3)`` in the unit sphere, uint32 triangles ``(F, 3)``."""

    vertices: np.ndarray
    triangles: np.ndarray


@register_extractor
class LightFieldExtractor(Extractor):
    """The Light Field Descriptor of a mesh: float32 ``(n, 4700)`` = ``[10 light fields][10 views][47]``."""

    modality = "mesh"
    name = "lightfield"
    Config = LightFieldConfig
    config: LightFieldConfig  # what __init__ makes of Config: typed so that its fields type-check
    extensions = (".obj", ".off", ".ply", ".stl")
    key_ignores = ("max_faces",)  # it refuses files, never changes a row
    is_default = True

    def __init__(self, config: LightFieldConfig | None = None, *, device: str = "cpu"):
        super().__init__(config, device=device)
        self._o3d = require("open3d", extractor=self.name, extra="3d")
        self._o3d.utility.set_verbosity_level(self._o3d.utility.VerbosityLevel.Error)
        self._measure = require("skimage.measure", extractor=self.name, extra="3d")

    @property
    def dim(self) -> int:
        return NUM_LIGHT_FIELDS * VIEWS_PER_LIGHT_FIELD * FEATURES_PER_VIEW

    def load(self, path: Path) -> Mesh:
        """Read and normalise a mesh (.obj, .off, .ply, .stl).

        Raises:
            MediaError: unreadable file, a header that declares more than the file holds (checked before any reader
                allocates for it), no vertices, no faces, NaN/infinite vertices, face indices out of range, every
                triangle of zero area, or more than ``max_faces`` triangles (from the header, before reading, when
                the format declares a count: OFF, PLY, binary STL; else once read).
        """
        path = Path(path)
        if not path.is_file():
            raise MediaError(path, "no such file (or a broken symlink)")
        if path.stat().st_size == 0:
            raise MediaError(path, "empty file (0 bytes)")
        declared = declared_counts(path)
        faces = declared[1] if declared else binary_stl_triangles(path)  # OBJ and text STL declare no count
        if faces > self.config.max_faces:
            raise _too_many_faces(path, self.config.max_faces, f"its header declares {faces}")
        vertices, triangles = self._read(path)
        if declared and (len(vertices) < declared[0] or len(triangles) < declared[1]):
            raise MediaError(path, f"truncated or malformed: the header declares {declared[0]} vertices and "
                                   f"{declared[1]} faces, {len(vertices)} and {len(triangles)} could be read")
        if len(triangles) > self.config.max_faces:  # polygons split into triangles, or a format without counts
            raise _too_many_faces(path, self.config.max_faces, f"{len(triangles)} triangles read")
        return normalise_mesh(path, vertices, triangles)

    def embed(self, items: Sequence[Mesh]) -> np.ndarray:
        """Light Field Descriptors of normalised meshes: float32 ``(n, 4700)``."""
        return np.stack([self.silhouette_features(self.silhouettes(m)).reshape(-1) for m in items])

    def silhouettes(self, mesh: Mesh) -> np.ndarray:
        """The 100 binary silhouettes, as their disk pixels: float32 ``(100, P)`` (P pixels inside the unit disk),
        ordered ``[light field][view]``; :func:`disk_grid` gives each pixel's place."""
        o3d = self._o3d
        scene = o3d.t.geometry.RaycastingScene()
        scene.add_triangles(o3d.core.Tensor(mesh.vertices), o3d.core.Tensor(mesh.triangles))
        rays = camera_rays(self.config.resolution)
        hit = scene.test_occlusions(o3d.core.Tensor.from_numpy(rays)).numpy()
        return hit.reshape(NUM_LIGHT_FIELDS * VIEWS_PER_LIGHT_FIELD, -1).astype(np.float32)

    def silhouette_features(self, S: np.ndarray) -> np.ndarray:
        """The 47 numbers of each silhouette: float32 ``(k, 47)`` from float32 ``(k, P)`` disk pixels."""
        R = self.config.resolution
        grid = disk_grid(R)
        n = len(ZERNIKE_ORDERS)
        M = (S @ pixel_moments(R)).astype(np.float64)  # one float32 GEMM: Zernike real/imaginary parts, raw moments
        zernike = np.hypot(M[:, :n], M[:, n:2 * n]) * (2.0 / R) ** 2  # (k, 35): |A_nm|, dA = pixel area
        area, sx, sy, sxx, syy, sxy = M[:, 2 * n:].T  # area in pixels; sums of x, y, x^2, y^2, xy over the silhouette
        safe = np.maximum(area, 1.0)
        cx, cy = sx / safe, sy / safe
        mu20, mu02, mu11 = sxx / safe - cx**2, syy / safe - cy**2, sxy / safe - cx * cy
        spread = np.sqrt((mu20 - mu02) ** 2 + 4 * mu11**2)
        lam_max, lam_min = (mu20 + mu02 + spread) / 2, np.maximum((mu20 + mu02 - spread) / 2, 0.0)
        eccentricity = np.sqrt(np.clip(1 - lam_min / np.where(lam_max > 0, lam_max, 1.0), 0.0, 1.0))
        eccentricity[lam_max <= 0] = 0.0

        images = np.zeros((S.shape[0], (R + 2) ** 2), bool)  # one pixel of background all around: closed contours
        images[:, grid.padded] = S > 0
        silhouettes = images.reshape(-1, R + 2, R + 2)
        perimeter = contour_length(silhouettes)
        compactness = np.where(perimeter > 0, 4 * math.pi * area / np.maximum(perimeter, 1e-12) ** 2, 0.0)
        fourier = self._fourier(outer_regions(silhouettes))
        features = [zernike, fourier, eccentricity[:, None], compactness[:, None]]
        return np.concatenate(features, axis=1).astype(np.float32)

    def _fourier(self, regions: np.ndarray) -> np.ndarray:
        """|F_1..F_10| / |F_0| of the centroid-distance signature of each region's outer contour: float64 ``(k, 10)``.

        Args:
            regions: bool ``(k, H, W)``, one filled 8-connected region per image (or none), background at the border.
        """
        out = np.zeros((len(regions), NUM_FOURIER))
        rows, cols = np.indices(regions.shape[1:])
        for i, region in enumerate(regions):
            pixels = region.sum()
            if pixels == 0:
                continue
            centre = np.array([(rows * region).sum(), (cols * region).sum()]) / pixels
            contours = self._measure.find_contours(region.astype(np.float32), 0.5, fully_connected="high")
            contour = max(contours, key=len)  # (row, col) points of the outer boundary, closed
            steps = np.linalg.norm(np.diff(contour, axis=0), axis=1)
            arc = np.concatenate([[0.0], np.cumsum(steps)])
            at = np.linspace(0.0, arc[-1], self.config.contour_points, endpoint=False)
            points = np.stack([np.interp(at, arc, contour[:, 0]), np.interp(at, arc, contour[:, 1])], axis=1)
            spectrum = np.abs(np.fft.fft(np.linalg.norm(points - centre, axis=1)))
            if spectrum[0] > 0:
                out[i] = spectrum[1:NUM_FOURIER + 1] / spectrum[0]
        return out

    def _read(self, path: Path) -> tuple[np.ndarray, np.ndarray]:
        """Vertices float64 ``(V, 3)``, triangles int64 ``(F, 3)``: open3d, or trimesh where open3d reads nothing."""
        mesh = self._o3d.io.read_triangle_mesh(str(path))
        vertices, triangles = np.asarray(mesh.vertices, np.float64), np.asarray(mesh.triangles, np.int64)
        if len(vertices) and len(triangles):
            return vertices, triangles
        trimesh = require("trimesh", extractor=self.name, extra="3d")
        try:
            with np.errstate(all="ignore"):  # a float32 PLY holding 1e308 reads as inf: checked, not warned about
                loaded: Any = trimesh.load(str(path), force="mesh", process=False)
        except Exception as exc:  # trimesh raises ValueError, KeyError, IndexError... on malformed files
            reason = f"not a readable mesh (open3d read nothing; trimesh: {type(exc).__name__}: {exc})"
            raise MediaError(path, reason) from exc
        vertices = np.asarray(getattr(loaded, "vertices", np.zeros((0, 3))), np.float64).reshape(-1, 3)
        triangles = np.asarray(getattr(loaded, "faces", np.zeros((0, 3))), np.int64).reshape(-1, 3)
        return vertices, triangles


def normalise_mesh(path: Path, vertices: np.ndarray, triangles: np.ndarray) -> Mesh:
    """Validate a mesh and move its area-weighted surface centroid to the origin, its farthest vertex to distance 1.

    Args:
        path: the file (for messages).
        vertices: float64 ``(V, 3)``.
        triangles: int ``(F, 3)`` vertex indices.

    Raises:
        MediaError: no vertices, no faces, non-finite vertices, indices out of range, zero total area, or coordinates
            so large that the areas or distances overflow float64 (e.g. near 1e308: an error, not a row of zeros).
    """
    if len(vertices) == 0 or len(triangles) == 0:
        what = "faces" if len(vertices) else "vertices" if len(triangles) else "vertices and no faces"
        raise MediaError(path, f"the mesh has no {what} (an empty mesh or a point cloud?)",
                         hint="the Light Field Descriptor needs a triangle surface")
    check_finite(path, "vertex coordinates", vertices)
    if triangles.min() < 0 or triangles.max() >= len(vertices):
        raise MediaError(path, f"face indices out of range (the mesh has {len(vertices)} vertices)")
    overflow = f"coordinates up to {np.abs(vertices).max():.3g} overflow float64"
    with np.errstate(all="ignore"):  # overflow is checked below, for this file, instead of warned about
        corners = vertices[triangles]  # (F, 3, 3)
        areas = 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=1)
        check_finite(path, "triangle areas", areas, why=overflow)
        total = areas.sum()
        if not total > 0:
            raise MediaError(path, "the mesh is degenerate (every triangle has zero area)")
        centroid = (areas[:, None] * corners.mean(axis=1)).sum(axis=0) / total
        check_finite(path, "surface centroid", centroid, why=overflow)
        used = np.unique(triangles[areas > 0])
        radius = np.linalg.norm(vertices[used] - centroid, axis=1).max()
        check_finite(path, "radius", radius, why=overflow)
        normalised = ((vertices - centroid) / radius).astype(np.float32)  # a far vertex of a degenerate face: inf
        check_finite(path, "normalised coordinates", normalised,
                     why=f"a vertex {np.abs(vertices).max() / radius:.3g} radii from the centre leaves float32")
    return Mesh(normalised, triangles.astype(np.uint32))


# Length of the marching-squares contour (threshold 0.5) in each 2x2 cell of a binary image, by the cell's corner case
# (bit 0: top-left, 1: top-right, 2: bottom-right, 3: bottom-left): a cut corner is a half-diagonal, a cut side a full
# step, a saddle two half-diagonals. The sum equals the length of skimage's find_contours, without linking segments.
_H = 0.5**0.5
_CELL_LENGTH = np.array([0, _H, _H, 1, _H, 2 * _H, 1, _H, _H, 1, 2 * _H, _H, 1, _H, _H, 0])


def contour_length(images: np.ndarray) -> np.ndarray:
    """Total length of all contours (outer and holes) of binary images, in pixels: float64 ``(k,)`` from bool
    ``(k, H, W)`` with background along the border."""
    b = images.astype(np.uint8)
    case = b[:, :-1, :-1] | b[:, :-1, 1:] << 1 | b[:, 1:, 1:] << 2 | b[:, 1:, :-1] << 3
    return _CELL_LENGTH[case].sum(axis=(1, 2))


def outer_regions(images: np.ndarray) -> np.ndarray:
    """The largest 8-connected component of each binary image with its holes filled: bool ``(k, H, W)``.

    One labelling of the whole stack (the structure links pixels within an image only), then one of the background:
    what is not connected to the image corner is a hole.
    """
    ndimage = require("scipy.ndimage", extractor="lightfield", extra="3d")
    within_image_8 = np.zeros((3, 3, 3), bool)
    within_image_8[1] = True
    labels, n = ndimage.label(images, structure=within_image_8)
    if n == 0:
        return np.zeros_like(images)
    counts = np.bincount(labels.ravel(), minlength=n + 1)
    # labels are numbered in raster order, so each image's labels follow the previous image's: image i owns the labels
    # up to the running maximum of the labels of images 0..i
    last_label = np.maximum.accumulate(labels.reshape(len(images), -1).max(axis=1))
    owner = np.searchsorted(last_label, np.arange(n + 1))
    order = np.lexsort((counts[1:], owner[1:])) + 1  # labels by image, then by size: the last of each image wins
    last = np.r_[owner[order][1:] != owner[order][:-1], True]
    best = np.zeros(len(images), np.int64)
    best[owner[order][last]] = order[last]
    largest = (labels == best[:, None, None]) & (best[:, None, None] > 0)
    within_image_4 = np.zeros((3, 3, 3), bool)
    within_image_4[1] = [[0, 1, 0], [1, 1, 1], [0, 1, 0]]
    background, _ = ndimage.label(~largest, structure=within_image_4)
    return background != background[:, :1, :1]


def _too_many_faces(path: Path, max_faces: int, how: str) -> MediaError:
    return MediaError(path, f"more triangles than the limit max_faces={max_faces} ({how})",
                      hint="simplify the mesh, or raise the limit with --set max_faces=N (memory grows by about "
                           "1.1 KB per triangle)")


def binary_stl_triangles(path: Path) -> int:
    """The triangle count a binary STL declares (0 for other files; :func:`declared_counts` checked it fits)."""
    if path.suffix.lower() != ".stl":
        return 0
    with open(path, "rb") as f:
        head = f.read(4096)  # as declared_counts reads it
    binary = len(head) >= 84 and not (head[:5].lower() == b"solid" and b"facet" in head)
    return int.from_bytes(head[80:84], "little") if binary else 0


def declared_counts(path: Path) -> tuple[int, int] | None:
    """The (vertices, faces) that an OFF or PLY header declares, None for formats without counts (OBJ, STL).

    Readers allocate what a header declares before reading (open3d's PLY reader asks for 24 GB when a 150-byte file
    claims 10^9 vertices), so a header is refused when the file is too small to hold what it declares: at least one
    byte per value in binary files, two (a digit and a separator) in text files. A binary STL must be exactly
    84 + 50 x (declared triangles) bytes.

    Raises:
        MediaError: the header declares more than the file can hold.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(4096)
    suffix = path.suffix.lower()
    if suffix == ".stl":
        binary = size >= 84 and not (head[:5].lower() == b"solid" and b"facet" in head)
        triangles = int.from_bytes(head[80:84], "little") if binary else 0
        if binary and size != 84 + 50 * triangles:
            raise MediaError(path, f"a binary STL declaring {triangles} triangles must be {84 + 50 * triangles} "
                                   f"bytes, the file has {size} (truncated or a lying header)")
        return None
    if suffix == ".off":
        declared, values = _off_header(head)
    elif suffix == ".ply":
        declared, values = _ply_header(head)
    else:
        return None
    if declared is not None and values > size:
        raise MediaError(path, f"the header declares {declared[0]} vertices and {declared[1]} faces, more than the "
                               f"{size}-byte file can hold (truncated or a lying header)")
    return declared


def _off_header(head: bytes) -> tuple[tuple[int, int] | None, int]:
    """Counts of an OFF header (also ``OFF8 12 0`` on one line, as some ModelNet files have), and the least bytes
    their values take (2 per value: 3 per vertex, 4 per triangle)."""
    lines = (line.split(b"#")[0].strip() for line in head.splitlines())
    tokens = [t for line in lines if line for t in line.split()][:4]
    if not tokens or b"OFF" not in tokens[0].upper():
        return None, 0
    keyword_end = tokens[0].upper().index(b"OFF") + 3
    numbers = ([tokens[0][keyword_end:]] if len(tokens[0]) > keyword_end else []) + tokens[1:]
    try:
        vertices, faces = int(numbers[0]), int(numbers[1])
    except (IndexError, ValueError):
        return None, 0
    return (vertices, faces), 2 * (3 * vertices + 4 * faces)


def _ply_header(head: bytes) -> tuple[tuple[int, int] | None, int]:
    """Counts of a PLY header's ``vertex`` and ``face`` elements, and the least bytes all its elements' values take
    (1 per property in binary, 2 in ASCII)."""
    if not head.startswith(b"ply") or b"end_header" not in head:
        return None, 0
    lines = head[:head.index(b"end_header")].decode("ascii", "replace").splitlines()
    per_value = 2 if any(line.split()[:2] == ["format", "ascii"] for line in lines if line.strip()) else 1
    counts: dict[str, int] = {}
    properties: dict[str, int] = {}
    element = ""
    for words in (line.split() for line in lines):
        if len(words) == 3 and words[0] == "element" and words[2].isdigit():
            element = words[1]
            counts[element], properties[element] = int(words[2]), 0
        elif words[:1] == ["property"] and element:
            properties[element] += 1
    values = sum(counts[e] * max(1, properties[e]) * per_value for e in counts)
    return (counts.get("vertex", 0), counts.get("face", 0)), values


class DiskGrid(NamedTuple):
    """The pixels of a ``R x R`` image whose centres lie in the unit disk: their flat indices ``(P,)`` in the image and
    in the image padded by one pixel on each side, and their float64 x, y coordinates."""

    flat: np.ndarray
    padded: np.ndarray
    x: np.ndarray
    y: np.ndarray


@functools.lru_cache(maxsize=4)
def disk_grid(resolution: int) -> DiskGrid:
    centres = (np.arange(resolution) + 0.5) * 2.0 / resolution - 1.0
    y, x = np.meshgrid(centres, centres, indexing="ij")  # row index = y, column index = x
    inside = (x**2 + y**2 <= 1.0).reshape(-1)
    flat = np.flatnonzero(inside)
    padded = (flat // resolution + 1) * (resolution + 2) + flat % resolution + 1
    return DiskGrid(flat, padded, x.reshape(-1)[inside], y.reshape(-1)[inside])


@functools.lru_cache(maxsize=4)
def pixel_moments(resolution: int) -> np.ndarray:
    """What every silhouette is multiplied by: float32 ``(P, 76)``, the real and imaginary parts of
    :func:`zernike_basis` (35 + 35), then ``1, x, y, x^2, y^2, xy`` of each disk pixel."""
    grid = disk_grid(resolution)
    basis = zernike_basis(resolution)
    raw = [np.ones_like(grid.x), grid.x, grid.y, grid.x**2, grid.y**2, grid.x * grid.y]
    return np.concatenate([basis.real, basis.imag, np.stack(raw, axis=1)], axis=1).astype(np.float32)


@functools.lru_cache(maxsize=4)
def zernike_basis(resolution: int) -> np.ndarray:
    """Conjugate Zernike polynomials times ``(n + 1) / pi`` on the disk pixels: complex64 ``(P, 35)``.

    ``S @ basis * pixel_area`` are the Zernike moments ``A_nm = (n + 1) / pi * sum f(x, y) V*_nm(rho, theta) dA``.
    """
    grid = disk_grid(resolution)
    rho, theta = np.hypot(grid.x, grid.y), np.arctan2(grid.y, grid.x)
    columns = []
    for n, m in ZERNIKE_ORDERS:
        radial = sum(
            (-1) ** s * math.factorial(n - s)
            / (math.factorial(s) * math.factorial((n + m) // 2 - s) * math.factorial((n - m) // 2 - s))
            * rho ** (n - 2 * s)
            for s in range((n - m) // 2 + 1)
        )
        columns.append((n + 1) / math.pi * radial * np.exp(-1j * m * theta))
    return np.stack(columns, axis=1).astype(np.complex64)


def dodecahedron_views() -> np.ndarray:
    """The 10 camera directions of one light field: one unit vertex of each antipodal pair of a regular
    dodecahedron, float64 ``(10, 3)``."""
    phi = (1 + 5**0.5) / 2
    vertices: list[tuple[float, float, float]] = [(a, b, c) for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)]
    for a in (-1, 1):
        for b in (-1, 1):
            vertices += [(0, a / phi, b * phi), (a / phi, b * phi, 0), (b * phi, 0, a / phi)]
    V = np.array(vertices, np.float64)
    V /= np.linalg.norm(V, axis=1, keepdims=True)
    keep = V @ np.array([1.0, 1e-3, 1e-6]) > 0  # a generic plane splits each antipodal pair
    return V[keep]


def _quaternion_matrix(q: np.ndarray) -> np.ndarray:
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
        [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
        [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)],
    ])


def camera_directions() -> np.ndarray:
    """All 100 viewing directions ``[light field][view]``: float64 ``(100, 3)``."""
    views = dodecahedron_views()
    return np.concatenate([views @ _quaternion_matrix(q).T for q in LIGHT_FIELD_ROTATIONS])


@functools.lru_cache(maxsize=2)
def camera_rays(resolution: int) -> np.ndarray:
    """Orthographic rays of the 100 views through every disk pixel: float32 ``(100 * P, 6)`` (origin, direction),
    read-only. Cached: at 256 x 256 they are 124 MB, made once per process instead of 0.15 s per mesh.

    The camera of direction ``d`` sees the plane spanned by ``u, v`` (any orthonormal pair perpendicular to ``d``; every
    per-view feature is invariant to a rotation in the image plane) from outside the unit sphere, looking along ``-d``.
    """
    grid = disk_grid(resolution)
    d = camera_directions()
    helper = np.where(np.abs(d[:, 2:3]) < 0.9, [[0.0, 0.0, 1.0]], [[1.0, 0.0, 0.0]])
    u = np.cross(d, helper)
    u /= np.linalg.norm(u, axis=1, keepdims=True)
    v = np.cross(d, u)
    rays = np.empty((len(d), len(grid.x), 6), np.float32)
    rays[..., :3] = grid.x[None, :, None] * u[:, None] + grid.y[None, :, None] * v[:, None] + 2.0 * d[:, None]
    rays[..., 3:] = -d[:, None]
    rays.flags.writeable = False
    return rays.reshape(-1, 6)

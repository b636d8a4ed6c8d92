"""Previews of gallery items for the web page: image thumbnails, video poster frames, mesh renders, text snippets.

Every picture is a PNG of at most ``size`` x ``size`` pixels, rendered once and cached on disk under a key made of the
file's resolved path, size and modification time, so an edited file gets a new preview and an unchanged one costs a
file read. Meshes are rendered by ray casting (open3d's ``RaycastingScene``): depth and normals from one viewpoint,
Lambert-shaded, with no OpenGL context, so it works on a headless server.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
from PIL import Image

from crossmodal.common.files import atomic_write
from extractors.base import require
from extractors.errors import MediaError

PREVIEW_SIZE = 256
"""Longest side of a preview, in pixels."""

SNIPPET_CHARS = 400
"""Characters of a text item shown on the page."""

PICTURE_MODALITIES: tuple[str, ...] = ("image", "video", "mesh")
"""Modalities whose preview is a picture (text previews are snippets; audio has a player, not a picture)."""


class PreviewCache:
    """Renders previews and keeps them as PNG files in ``directory``.

    Args:
        directory: the cache folder (created on first write).
        size: longest side of a preview in pixels.
    """

    def __init__(self, directory: str | Path, *, size: int = PREVIEW_SIZE):
        self.directory = Path(directory)
        self.size = size

    def picture(self, path: Path, modality: str) -> Path:
        """The cached PNG preview of ``path``, rendering it first if needed.

        Args:
            path: the media file (already checked by the caller to be a served item).
            modality: ``image``, ``video`` or ``mesh``.

        Returns:
            Path of the PNG.

        Raises:
            MediaError: the file cannot be decoded.
            ValueError: ``modality`` has no picture preview.
        """
        if modality not in PICTURE_MODALITIES:
            raise ValueError(f"{modality} items have no picture preview")
        stat = path.stat()
        key = hashlib.sha256(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}|{self.size}".encode()).hexdigest()
        cached = self.directory / f"{modality}-{key[:32]}.png"
        if cached.is_file():
            return cached
        png = _encode_png(RENDERERS[modality](path, self.size))
        self.directory.mkdir(parents=True, exist_ok=True)
        # Two requests rendering the same preview at once each replace a whole file; a cache needs no fsync.
        return atomic_write(cached, png, durable=False)


def text_snippet(path: Path, *, chars: int = SNIPPET_CHARS) -> str:
    """The first ``chars`` characters of a text file (UTF-8, undecodable bytes replaced), with ``…`` when cut."""
    with open(path, encoding="utf-8", errors="replace") as f:
        text = f.read(chars + 1)
    return text if len(text) <= chars else text[:chars].rstrip() + "…"


def image_thumbnail(path: Path, size: int) -> Image.Image:
    """The image at ``path`` as RGB, shrunk to fit ``size`` x ``size`` (never enlarged beyond 4x its size)."""
    try:
        with Image.open(path) as im:
            im.draft("RGB", (size, size))  # JPEG: decode at a reduced scale
            image = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MediaError(path, f"not a decodable image (PIL: {exc})") from exc
    return _fit(image, size)


def video_poster(path: Path, size: int) -> Image.Image:
    """A poster frame of the video at ``path``: the frame a third of the way in (the first frame is often blank)."""
    av = require("av", extractor="video preview", extra="video")
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise MediaError(path, "no video stream")
            stream = container.streams.video[0]
            frames = stream.frames or 0
            poster = None
            for i, frame in enumerate(container.decode(stream)):
                poster = frame
                if i >= frames // 3:
                    break
    except av.FFmpegError as exc:
        raise MediaError(path, f"not a decodable video (PyAV: {exc})") from exc
    if poster is None:
        raise MediaError(path, "the video has no frames")
    return _fit(poster.to_image().convert("RGB"), size)


def mesh_render(path: Path, size: int) -> Image.Image:
    """A shaded render of the mesh at ``path`` (.obj, .off, .ply, .stl) seen from above-front-right.

    Rays are cast from a pinhole camera at 2.6 bounding-sphere radii from the centre; each hit pixel is shaded by
    ``0.25 + 0.75 |n . l|`` (two-sided Lambert with the light at the camera), misses are white.
    """
    o3d = require("open3d", extractor="mesh preview", extra="3d")
    mesh = o3d.io.read_triangle_mesh(str(path))
    if len(mesh.triangles) == 0:
        raise MediaError(path, "not a readable mesh with faces (open3d read no triangles)")
    vertices = np.asarray(mesh.vertices, dtype=np.float32)
    if not np.isfinite(vertices).all():
        raise MediaError(path, "the mesh has non-finite vertex coordinates")
    low, high = vertices.min(0), vertices.max(0)
    centre = (low + high) / 2
    radius = float(np.linalg.norm(high - low)) / 2 or 1.0
    view = np.array([0.6, 0.5, 1.0], dtype=np.float32)
    view /= np.linalg.norm(view)
    eye = centre + 2.6 * radius * view
    scene = o3d.t.geometry.RaycastingScene()
    scene.add_triangles(o3d.t.geometry.TriangleMesh.from_legacy(mesh))
    rays = scene.create_rays_pinhole(fov_deg=45.0, center=centre.tolist(), eye=eye.tolist(), up=[0.0, 1.0, 0.0],
                                     width_px=size, height_px=size)
    hits = scene.cast_rays(rays)
    hit = np.isfinite(hits["t_hit"].numpy())
    normals = hits["primitive_normals"].numpy()
    light = -rays.numpy()[..., 3:6]
    light /= np.linalg.norm(light, axis=-1, keepdims=True)
    shade = 0.25 + 0.75 * np.abs((normals * light).sum(-1))
    base = np.array([70, 110, 190], dtype=np.float32)
    pixels = np.where(hit[..., None], shade[..., None] * base, 255.0)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8), mode="RGB")


RENDERERS = {"image": image_thumbnail, "video": video_poster, "mesh": mesh_render}


def _fit(image: Image.Image, size: int) -> Image.Image:
    scale = min(size / image.width, size / image.height, 4.0)
    shape = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
    return image.resize(shape, Image.Resampling.LANCZOS if scale < 1 else Image.Resampling.NEAREST)


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()

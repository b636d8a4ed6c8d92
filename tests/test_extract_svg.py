"""SVG images (issue 11): rasterised with resvg on white at their declared size, bounded, every bad file one error."""

from __future__ import annotations

import base64
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from extractors import create_extractor
from extractors.errors import MediaError
from extractors.image import SVG_MAX_SIDE, decode_image

pytest.importorskip("resvg_py")

MAX_PIXELS = 89_478_485


def svg(body: str = "", *, width="40", height="20", extra: str = "") -> bytes:
    size = "".join(f' {k}="{v}"' for k, v in (("width", width), ("height", height)) if v is not None)
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink"{size}{extra}>'
            f'{body}</svg>').encode()


def write(tmp_path, name: str, content: bytes):
    path = tmp_path / name
    path.write_bytes(content)
    return path


def test_an_svg_is_drawn_on_white_at_its_declared_size(tmp_path):
    path = write(tmp_path, "flag.svg", svg('<rect x="10" y="5" width="20" height="10" fill="#ff0000"/>'))
    rgb = np.asarray(decode_image(path, max_pixels=MAX_PIXELS))
    expected = np.full((20, 40, 3), 255, np.uint8)
    expected[5:15, 10:30] = (255, 0, 0)
    np.testing.assert_array_equal(rgb, expected)


@pytest.mark.parametrize(("width", "height", "extra", "size"), [
    ("30pt", "0.25in", "", (40, 24)),  # CSS units at 96 dpi
    (None, None, ' viewBox="0 0 64 32"', (64, 32)),  # no size: the viewBox's
    ("50%", "100%", ' viewBox="0 0 64 32"', (32, 32)),  # a percentage of the viewBox
    (None, None, "", (100, 100)),  # neither: resvg's default
])
def test_the_declared_size_is_read_in_any_unit(tmp_path, width, height, extra, size):
    path = write(tmp_path, "a.svg", svg(width=width, height=height, extra=extra))
    assert decode_image(path, max_pixels=MAX_PIXELS).size == size


@pytest.mark.parametrize(("width", "height", "size"), [
    ("100000", "100000", (SVG_MAX_SIDE, SVG_MAX_SIDE)),
    ("100000", "50000", (SVG_MAX_SIDE, SVG_MAX_SIDE // 2)),
    ("100000", "10", (SVG_MAX_SIDE, 1)),
])
def test_a_huge_declared_size_is_scaled_down_to_the_bound_with_its_aspect(tmp_path, width, height, size):
    path = write(tmp_path, "huge.svg", svg('<rect width="100%" height="100%" fill="blue"/>', width=width,
                                           height=height))
    image = decode_image(path, max_pixels=MAX_PIXELS)
    assert image.size == size
    assert np.asarray(image)[0, 0].tolist() == [0, 0, 255]


def _png_header(width: int, height: int) -> bytes:
    from badfiles import png_header_bytes

    return png_header_bytes(width, height)


BAD = [
    ("not-xml", b"<svg xmlns='http://www.w3.org/2000/svg' width='4' height='4'><rect", "not a well-formed SVG"),
    ("html-root", b"<html><body>hi</body></html>", "not an SVG document (its root element is <html>)"),
    ("entity-bomb", b'<?xml version="1.0"?><!DOCTYPE svg [<!ENTITY a "aaaaaaaaaa">'
     + b"".join(b'<!ENTITY %c "%s">' % (98 + i, b"&%c;" % (97 + i) * 10) for i in range(9))
     + b']><svg xmlns="http://www.w3.org/2000/svg" width="4" height="4"><text>&j;</text></svg>', "amplification"),
    ("zero-width", svg(width="0"), "declares no valid size"),
    ("negative-height", svg(height="-5"), "declares no valid size"),
    ("nan-width", svg(width="nan"), "declares no valid size"),
    ("overflowing-width", svg(width="1e400"), "declares no valid size"),
    ("links-a-file", svg('<image width="4" height="4" xlink:href="/etc/hostname"/>'), "links to another file"),
    ("links-a-url", svg('<image width="4" height="4" href="http://127.0.0.1/x.png"/>'), "links to another file"),
    ("embedded-png-bomb", svg('<image width="4" height="4" href="data:image/png;base64,'
                              + base64.b64encode(_png_header(100_000, 100_000)).decode() + '"/>'),
     "embedded image is over the limit"),
    ("use-loop", svg('<g id="a"><use href="#b"/></g><g id="b"><use href="#a"/></g>'), "cannot read it"),
    ("deep-nesting", svg("<g>" * 20_000 + "</g>" * 20_000), "crashed on this file (SIGSEGV"),
]


@pytest.mark.parametrize(("name", "content", "reason"), BAD, ids=[b[0] for b in BAD])
def test_each_kind_of_bad_svg_is_one_media_error_and_the_process_survives(tmp_path, name, content, reason):
    path = write(tmp_path, f"{name}.svg", content)
    with pytest.raises(MediaError, match="^" + str(path).replace(".", r"\.") + ": ") as info:
        decode_image(path, max_pixels=MAX_PIXELS)
    assert reason in info.value.reason


def test_an_embedded_data_image_is_drawn(tmp_path):
    buf = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 200, 0)).save(buf, format="PNG")
    href = "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()
    path = write(tmp_path, "embedded.svg", svg(f'<image width="40" height="20" href="{href}" '
                                               'preserveAspectRatio="none"/>'))
    assert np.asarray(decode_image(path, max_pixels=MAX_PIXELS))[10, 20].tolist() == [0, 200, 0]


def test_hog_color_reads_an_svg_as_the_same_picture_in_png(tmp_path):
    drawing = svg('<rect x="8" y="4" width="16" height="8" fill="#3366cc"/>', width="32", height="16")
    as_svg = write(tmp_path, "a.svg", drawing)
    as_png = tmp_path / "a.png"
    decode_image(as_svg, max_pixels=MAX_PIXELS).save(as_png)
    extractor = create_extractor("hog-color", size=32, pixels_per_cell=8)
    assert extractor.accepts(as_svg)
    X = extractor([extractor.load(as_svg), extractor.load(as_png)])
    np.testing.assert_array_equal(X[0], X[1])


def test_without_resvg_svg_is_no_image_extension_and_the_reason_is_given():
    code = ("import sys; sys.modules['resvg_py'] = None\n"
            "from extractors import create_extractor\n"
            "e = create_extractor('hog-color')\n"
            "print('.svg' in e.extensions, e.unreadable['.svg'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False SVG images need the resvg-py package: pip install 'crossmodal-toolkit[image]'"


def test_an_svg_renders_in_a_process_under_its_own_memory_limit(tmp_path):
    """The server runs queries under an address-space limit: the renderer's child keeps it instead of failing to
    raise its own above it."""
    path = write(tmp_path, "a.svg", svg('<rect width="10" height="10"/>'))
    code = ("import resource, sys\n"
            "from extractors.image import decode_image\n"
            "size = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
            "resource.setrlimit(resource.RLIMIT_AS, (size + (512 << 20), size + (768 << 20)))\n"
            f"print(decode_image({str(path)!r}, max_pixels=100).size)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "(40, 20)"


def test_renderings_in_parallel_threads_each_get_their_own_result(tmp_path):
    """A rendering forked by one thread must not hold another thread's pipe open (that reader would wait for it)."""
    from concurrent.futures import ThreadPoolExecutor

    paths = [write(tmp_path, f"{i}.svg", svg(f'<rect width="{4 + i}" height="4"/>', width=str(8 + i), height="8"))
             for i in range(8)]
    paths.append(write(tmp_path, "crash.svg", svg("<g>" * 20_000 + "</g>" * 20_000)))

    def size_or_reason(path):
        try:
            return decode_image(path, max_pixels=MAX_PIXELS).size
        except MediaError as exc:
            return exc.reason

    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(size_or_reason, paths))
    assert results[:8] == [(8 + i, 8) for i in range(8)]
    assert results[8].startswith("the SVG renderer (resvg) crashed on this file")


def test_a_rendering_past_its_time_limit_is_killed_and_named():
    import time

    from extractors.image import run_isolated

    start = time.monotonic()
    with pytest.raises(MediaError, match="a slow renderer ran past its limit of 0.5 s"):
        run_isolated("slow.svg", lambda: time.sleep(30) or b"", what="a slow renderer", seconds=0.5)
    assert time.monotonic() - start < 5

"""Media I/O: header-first image limits, every PIL mode scaled right, frame folders, atomic writes."""
import io
import struct
import warnings
import zlib

import numpy as np
import pytest
from PIL import Image

from fgp_fast.errors import InputError
from fgp_fast.media import (MAX_PIXELS, MAX_SIDE, atomic_write, atomic_write_all, decode_image, image_size,
                            load_image, read_image_folder, save_png)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_header_only(width: int, height: int, color_type: int = 0) -> bytes:
    """A PNG whose header claims width x height and whose pixel data is garbage: decoding it would
    fail, so an error about its size proves the size was checked from the header first."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", b"not zlib") + _chunk(b"IEND", b"")


def png_blank(width: int, height: int) -> bytes:
    """A valid all-black grayscale PNG, compressed row by row (a 32767 x 2 one is ~150 bytes)."""
    z = zlib.compressobj(9)
    row = bytes(1 + width)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def _encode(im: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    im.save(out, fmt)
    return out.getvalue()


@pytest.fixture(scope="module")
def photo():
    """A smooth random RGB image (JPEG-friendly) with the full value range."""
    rng = np.random.default_rng(7)
    base = rng.uniform(0, 255, (6, 8, 3))
    return np.asarray(Image.fromarray(base.astype(np.uint8)).resize((64, 48), Image.BICUBIC))


# --------------------------------------------------------------------------- limits from the header
@pytest.mark.parametrize("width,height,needle", [
    (32767, 2, "longest side allowed is 8192"),          # aborted OpenCV's remap (issue 13, item 1)
    (16777216, 1, "longest side allowed is 8192"),       # 16 KB, 1.5 GB of RSS (item 5)
    (12000, 12000, "longest side allowed is 8192"),      # 140 KB, 5.3 GB peak (item 5)
    (8192, 8193, "longest side allowed"),
    (100000, 100000, "too large to decode"),             # PIL's own bomb error, 27 lines before (item 15)
])
def test_oversized_header_is_refused_before_any_pixel(tmp_path, width, height, needle):
    data = png_header_only(width, height)
    with pytest.raises(InputError, match=needle) as exc:
        decode_image(data)
    assert "\n" not in str(exc.value)
    assert f"{width}x{height}" in str(exc.value) or f"{width * height} pixels" in str(exc.value)
    path = tmp_path / "big.png"
    path.write_bytes(data)
    with pytest.raises(InputError, match=needle):
        load_image(path)


def test_pixel_limit_is_checked_too():
    with pytest.raises(InputError, match="at most 1000000 are allowed"):
        decode_image(png_header_only(2000, 1000), max_pixels=1_000_000)
    assert MAX_SIDE ** 2 <= MAX_PIXELS  # the defaults: a square at the side limit passes


def test_a_valid_32767x2_png_is_refused_from_its_141_bytes():
    data = png_blank(32767, 2)
    assert len(data) < 400
    with pytest.raises(InputError, match="32767x2"):
        decode_image(data)
    assert decode_image(data, max_side=32767).shape == (2, 32767, 3)  # the limits are the caller's


@pytest.mark.parametrize("width,height,needle", [(100000, 100000, "too large to decode"),
                                                  (10000, 10000, "cannot decode image")])
def test_pil_bomb_check_gives_one_input_error_and_no_warning(width, height, needle):
    """With limits above PIL's own (89 MP warns, 179 MP raises), PIL's error is one InputError line;
    its warning does not escape (the caller's limits decide; this header's pixels are garbage)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(InputError, match=needle) as exc:
            decode_image(png_header_only(width, height), max_pixels=10**12, max_side=10**6)
    assert "\n" not in str(exc.value)


def test_image_size_reads_only_the_header(tmp_path):
    path = tmp_path / "h.png"
    path.write_bytes(png_header_only(640, 480))
    assert image_size(path) == (640, 480)


@pytest.mark.parametrize("data,needle", [
    (b"", "cannot read image"),
    (b"\x89PNG\r\n\x1a\n not really", "cannot read image"),
    (png_header_only(64, 64), "cannot decode image"),
])
def test_broken_bytes_are_one_input_error(data, needle):
    with pytest.raises(InputError, match=needle):
        decode_image(data)


def test_truncated_png_is_an_input_error(photo):
    data = _encode(Image.fromarray(photo), "PNG")
    with pytest.raises(InputError, match="cannot decode"):
        decode_image(data[:len(data) // 2])


def test_decode_checks_its_argument_and_formats(photo):
    with pytest.raises(InputError, match="expected encoded image bytes"):
        decode_image("not bytes")
    bmp = _encode(Image.fromarray(photo), "BMP")
    assert decode_image(bmp).shape == photo.shape
    with pytest.raises(InputError, match="cannot read image"):
        decode_image(bmp, formats=("PNG", "JPEG"))


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found"):
        load_image(tmp_path / "nope.png")
    with pytest.raises(InputError, match="directory"):
        load_image(tmp_path)


# --------------------------------------------------------------------------- every mode, full range
def test_sixteen_bit_grayscale_is_not_saturated():
    """Issue 13, item 15: a 16-bit portrait decoded with mean 0.973 instead of 0.57."""
    rng = np.random.default_rng(3)
    gray = np.clip(rng.normal(0.57, 0.15, (40, 50)), 0, 1)
    data16 = (gray * 65535 + 0.5).astype(np.uint16)
    for fmt in ("PNG", "TIFF"):
        out = decode_image(_encode(Image.fromarray(data16), fmt))
        assert out.dtype == np.uint8 and out.shape == (40, 50, 3)
        expected = data16.astype(np.float64) / 65535 * 255
        assert np.abs(out[..., 0] - expected).max() <= 0.5 + 1e-9
        assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
        assert abs(out.mean() / 255 - gray.mean()) < 0.005


def test_sixteen_bit_pgm_read_as_mode_i():
    values = np.array([[0, 1000, 32768], [40000, 65000, 65535]], np.uint16)
    data = b"P5\n3 2\n65535\n" + values.astype(">u2").tobytes()
    assert Image.open(io.BytesIO(data)).mode == "I"
    out = decode_image(data)[..., 0]
    assert np.array_equal(out, np.round(values / 65535 * 255).astype(np.uint8))


def test_float_images_are_taken_as_zero_to_one():
    values = np.array([[0.0, 0.25, 0.5], [0.75, 1.0, 1.5]], np.float32)
    out = decode_image(_encode(Image.fromarray(values, "F"), "TIFF"))[..., 0]
    assert np.array_equal(out, [[0, 64, 128], [191, 255, 255]])
    bad = values.copy()
    bad[0, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        decode_image(_encode(Image.fromarray(bad, "F"), "TIFF"))


@pytest.mark.parametrize("mode,fmt", [
    ("RGB", "PNG"), ("RGBA", "PNG"), ("L", "PNG"), ("LA", "PNG"), ("P", "PNG"), ("1", "PNG"), ("I;16", "PNG"),
    ("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("CMYK", "TIFF"), ("YCbCr", "TIFF"), ("LAB", "TIFF"),
    ("I;16", "TIFF"), ("RGB", "WEBP"), ("RGBA", "WEBP"), ("RGB", "BMP"), ("P", "GIF"), ("RGB", "PPM"),
])
def test_every_mode_decodes_to_the_same_rgb_as_pil(photo, mode, fmt):
    """Each file decodes to (H, W, 3) uint8 equal to PIL's own RGB view of it, except that 16-bit
    data is scaled by 65535 (PIL's RGB view clips it at 255); lossless files give back the photo."""
    im = Image.fromarray(photo)
    gray = np.asarray(im.convert("L"))
    src = Image.fromarray(gray.astype(np.uint16) * 257) if mode == "I;16" else im.convert(mode)
    data = _encode(src, fmt)
    with Image.open(io.BytesIO(data)) as reread:
        if reread.mode.startswith("I"):
            expected = np.repeat(gray[..., None], 3, 2)
            assert np.asarray(reread.convert("RGB")).min() == 255 or gray.min() < 1  # PIL's view saturates
        else:
            expected = np.asarray(reread.convert("RGB"))
    out = decode_image(data)
    assert out.shape == photo.shape and out.dtype == np.uint8
    assert np.array_equal(out, expected)
    if fmt in ("PNG", "TIFF", "BMP", "PPM") and mode in ("RGB", "RGBA", "CMYK"):
        assert np.array_equal(out, photo)


def test_file_and_bytes_decode_alike(tmp_path, photo):
    path = tmp_path / "p.png"
    path.write_bytes(_encode(Image.fromarray(photo), "PNG"))
    assert np.array_equal(load_image(path), decode_image(path.read_bytes()))
    assert np.array_equal(load_image(path), photo)


# --------------------------------------------------------------------------- frame folders
def test_folder_headers_are_checked_before_any_decode(tmp_path, photo, monkeypatch):
    for i in range(3):
        save_png(photo, tmp_path / f"{i:02d}.png")
    (tmp_path / "99.png").write_bytes(png_blank(32767, 2))
    decoded = []
    import fgp_fast.media.video as video

    monkeypatch.setattr(video, "load_image", lambda *a, **k: decoded.append(a) or photo)
    with pytest.raises(InputError, match="99.png is 32767x2"):
        read_image_folder(tmp_path)
    assert decoded == []


def test_folder_of_mixed_sizes_is_refused(tmp_path, photo):
    save_png(photo, tmp_path / "a.png")
    save_png(photo[:32], tmp_path / "b.png")
    with pytest.raises(InputError, match="different sizes"):
        read_image_folder(tmp_path)


# --------------------------------------------------------------------------- atomic writes
def _names(directory):
    return sorted(p.name for p in directory.iterdir())


def test_atomic_write_is_all_or_nothing(tmp_path):
    with atomic_write(tmp_path / "a.txt") as tmp:
        tmp.write_text("one")
    assert (tmp_path / "a.txt").read_text() == "one"
    with pytest.raises(RuntimeError):
        with atomic_write(tmp_path / "a.txt") as tmp:
            tmp.write_text("two, half written")
            raise RuntimeError("interrupted")
    assert (tmp_path / "a.txt").read_text() == "one" and _names(tmp_path) == ["a.txt"]


def test_atomic_directory_replaces_the_old_one(tmp_path):
    for text in ("old", "new"):
        with atomic_write(tmp_path / "d", directory=True) as tmp:
            (tmp / text).write_text(text)
    assert _names(tmp_path) == ["d"] and _names(tmp_path / "d") == ["new"]


def test_atomic_commit_onto_a_directory_leaves_no_temp(tmp_path):
    (tmp_path / "out.png").mkdir()
    (tmp_path / "out.png" / "keep").write_text("x")
    with pytest.raises(OSError):
        with atomic_write(tmp_path / "out.png") as tmp:
            tmp.write_bytes(b"data")
    assert _names(tmp_path) == ["out.png"] and _names(tmp_path / "out.png") == ["keep"]


def test_atomic_write_all_leaves_none_of_a_failed_set(tmp_path):
    finals = [tmp_path / "a.png", tmp_path / "b.npy"]
    with pytest.raises(OSError):
        with atomic_write_all(finals) as tmps:
            tmps[0].write_bytes(b"png")
            raise PermissionError("b.npy is not writable")
    assert _names(tmp_path) == []
    with atomic_write_all(finals) as tmps:
        for t in tmps:
            t.write_bytes(b"x")
    assert _names(tmp_path) == ["a.png", "b.npy"]

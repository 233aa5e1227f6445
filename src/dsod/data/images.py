"""Image files -> pixels, with every decoding problem turned into a one-line ``ImageError``.

Decoding is PIL's. What we normalise, and why:
- **EXIF orientation** is applied (``ImageOps.exif_transpose``): annotation tools and viewers show
  the upright image, so boxes refer to it. Orientations 5-8 swap width and height, which is why
  ``image_size`` reports the size *after* the transpose (readers store that size in the record).
- **Any mode -> RGB** (grayscale, palette, RGBA/LA (alpha dropped), CMYK, 16-bit). The pipeline keeps
  RGB through augmentation (hue and saturation need it) and reverses the channels to BGR only in the
  final normalisation (ORIGINAL.md §1.1: the network sees BGR 0-255 minus the mean).
- **Decompression bombs**: images above ``MAX_PIXELS`` (100 MP) are refused before decoding. PIL's own
  guard (a warning above ~89 MP, an error above ~179 MP) is caught and reported the same way.
"""
from __future__ import annotations

import glob
import os
import warnings
from pathlib import Path
from typing import List, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..errors import DsodError

# A 100-megapixel image is already 300 MB of RGB; nothing a 300/512 px detector needs. Larger headers
# are much more likely to be corrupt or hostile (decompression bomb) than real training data.
MAX_PIXELS = 100_000_000

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm", ".mpo")

_EXIF_ORIENTATION = 0x0112
_SWAPS_SIZE = (5, 6, 7, 8)  # EXIF orientations that transpose the image (90/270 degree rotations)

PathLike = Union[str, Path]


class ImageError(DsodError):
    """A file that cannot be used as an image; ``str(e)`` is the reason (callers add the path)."""


def is_image_file(path: PathLike) -> bool:
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def find_images(source: PathLike) -> List[Path]:
    """A file, a folder (its images, sorted; a VOC root: its ``JPEGImages``) or a glob pattern -> image
    paths (``dsod predict``, ``dsod export``). ``FileNotFoundError`` with a one-line reason if none."""
    s = str(source)
    p = Path(s).expanduser()
    if p.is_dir() and (p / "JPEGImages").is_dir():
        p = p / "JPEGImages"
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if is_image_file(f))
        if not files:
            raise FileNotFoundError(f"{s}: no image files in this folder")
        return files
    if p.is_file():
        return [p]
    if any(ch in s for ch in "*?["):
        files, seen = [], set()
        for f in sorted(glob.glob(s, recursive=True)):  # each real file once (links, link loops)
            if is_image_file(f) and os.path.realpath(f) not in seen:
                seen.add(os.path.realpath(f))
                files.append(Path(f))
        if not files:
            raise FileNotFoundError(f"{s}: the pattern matches no images")
        return files
    raise FileNotFoundError(f"{s}: no such file or folder")


def _open(path: Path, max_pixels: int) -> Image.Image:
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise ImageError("image file not found") from None
    except OSError as e:
        raise ImageError(f"cannot read the file ({e.strerror or e})") from None
    if path.is_dir():
        raise ImageError("is a folder, not an image file")
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with warnings.catch_warnings():
            # We apply our own (explicit) limit below; PIL's warning would otherwise spam the log.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(path)
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large, refused as a possible decompression bomb (PIL: {e})") from None
    except UnidentifiedImageError:
        raise ImageError("not an image PIL can read (unknown format or corrupt header)") from None
    except (OSError, ValueError, SyntaxError) as e:
        raise ImageError(f"corrupt image header ({e})") from None
    w, h = img.size
    if w <= 0 or h <= 0:
        img.close()
        raise ImageError(f"invalid image size {w}x{h}")
    if w * h > max_pixels:
        img.close()
        raise ImageError(f"image too large: {w}x{h} = {w * h / 1e6:.0f} MP > limit {max_pixels / 1e6:.0f} MP "
                         "(decompression-bomb guard)")
    return img


def _orientation(img: Image.Image) -> int:
    try:
        return int(img.getexif().get(_EXIF_ORIENTATION, 1) or 1)
    except Exception:  # a broken EXIF block must not make the image unusable; treat as upright
        return 1


def image_size(path: PathLike, max_pixels: int = MAX_PIXELS) -> Tuple[int, int, int]:
    """(width, height, exif_orientation) from the header only (no pixel decoding). Width and height
    are those of the upright image, i.e. swapped for EXIF orientations 5-8."""
    img = _open(Path(path), max_pixels)
    try:
        w, h = img.size
        orientation = _orientation(img)
    finally:
        img.close()
    if orientation in _SWAPS_SIZE:
        w, h = h, w
    return w, h, orientation


def _to_rgb_array(img: Image.Image) -> np.ndarray:
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        # High bit-depth grayscale: PIL's convert("RGB") would clip at 255, so scale to 8 bits.
        arr = np.asarray(img, dtype=np.float64)
        if mode.startswith("I;16") or (mode == "I" and arr.max(initial=0) > 255):
            arr = arr / 257.0
        arr = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
        return np.repeat(arr[..., None], 3, axis=2)
    if mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")  # PIL warns when a palette image with transparency goes straight to RGB
    if img.mode != "RGB":
        img = img.convert("RGB")  # alpha is dropped; CMYK/YCbCr/L/1/LA are converted by PIL
    return np.array(img, dtype=np.uint8)  # a writable copy (torch.from_numpy warns on read-only arrays)


def load_image(path: PathLike, max_pixels: int = MAX_PIXELS,
               min_size: Optional[Tuple[int, int]] = None) -> np.ndarray:
    """Decode ``path`` to an upright (EXIF-transposed) RGB uint8 array (H, W, 3).
    Raises ``ImageError`` with a one-line reason for anything unusable (missing, empty, not an image,
    truncated, too large).

    ``min_size`` (width, height of the upright image): a JPEG may then be decoded at reduced size,
    the smallest of libjpeg's DCT scales 1/2, 1/4, 1/8 (PIL's draft mode) that is still at least
    ``min_size`` in both dimensions; the caller maps its coordinates by the returned shape. Decoding
    a 2048x1371 photo at 1/4 costs a fraction of the full decode, and the DCT scaling averages the
    dropped pixels (like a box filter), so nothing aliases. Other formats decode at full size."""
    src = _open(Path(path), max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if min_size is not None and src.format in ("JPEG", "MPO"):
                _draft(src, min_size)
            src.load()  # truncated/corrupt data surfaces here, not at open()
            arr = _to_rgb_array(ImageOps.exif_transpose(src))
    except ImageError:
        raise
    except Image.DecompressionBombError as e:
        raise ImageError(f"image too large, refused as a possible decompression bomb (PIL: {e})") from None
    except (OSError, ValueError, SyntaxError, EOFError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ImageError(f"truncated or corrupt image data ({msg})") from None
    finally:
        src.close()
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise ImageError(f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)


def _draft(img: Image.Image, min_size: Tuple[int, int]) -> None:
    w, h = max(1, int(min_size[0])), max(1, int(min_size[1]))
    if _orientation(img) in _SWAPS_SIZE:  # the file stores the image transposed: so does draft
        w, h = h, w
    if w < img.size[0] or h < img.size[1]:
        # PIL picks scale = largest of 8, 4, 2, 1 with size // scale >= (w, h), size rounded up; the
        # mode is kept (draft could also convert, e.g. to L, which we do not want here)
        img.draft(img.mode, (w, h))


def load_image_bgr(path: PathLike, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Like ``load_image`` but in the network's channel order, BGR (ORIGINAL.md §1.1)."""
    return np.ascontiguousarray(load_image(path, max_pixels)[..., ::-1])

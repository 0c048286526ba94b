"""Images of vision data: resolve a reference (a path relative to the data file, or a data URI), check
that it is a readable picture within the size limits, and store it content-addressed under the
prepared data, so that the prepared records are self-contained and change whenever an image does.

Problems are RowErrors naming the image reference and the fix; the caller adds file and row.
"""

import base64
import binascii
import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

from slothline.errors import RowError

FORMATS = {"PNG": ".png", "JPEG": ".jpg", "MPO": ".jpg", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif"}  # PIL name: suffix
# The longest side over the shortest that Qwen2-VL, Qwen2.5-VL and Qwen3-VL accept: transformers' smart_resize
# (models/qwen2_vl/image_processing_qwen2_vl.py) raises "absolute aspect ratio must be smaller than 200" above it,
# with the literal 200 in the function; qwen_vl_utils names it MAX_RATIO.
MAX_RATIO = 200


@dataclass(frozen=True)
class StoredImage:
    """An image as prepare stores it: its bytes, file name (a content hash) and size in pixels."""

    data: bytes
    name: str
    width: int
    height: int


def locate(reference: str, base_dir: Path) -> str:
    """A data URI as it is; a path (or file:// URI) relative to `base_dir`, the data file's folder."""
    if reference.startswith(("data:", "http://", "https://")):
        return reference
    return str(base_dir / reference.removeprefix("file://"))


def aspect_ratio_limit(processor) -> float:
    """The longest side over the shortest that `processor`'s image processor accepts: its own `max_ratio` or
    `MAX_RATIO` (on the image processor or its module) where it has one, else MAX_RATIO."""
    image_processor = getattr(processor, "image_processor", None) or processor
    for owner in (image_processor, sys.modules.get(type(image_processor).__module__)):
        for name in ("max_ratio", "MAX_RATIO"):
            value = getattr(owner, name, None)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 1:
                return value
    return MAX_RATIO


def store_image(location: str, min_pixels: int | None, max_pixels: int | None, reference: str | None = None,
                max_ratio: float | None = MAX_RATIO) -> StoredImage:
    """The image at `location` (see `locate`; errors name it as the row's `reference`) as a viewer shows it
    (`as_viewed`), checked, and scaled down (keeping its aspect ratio) to at most `max_pixels` pixels; fewer
    than `min_pixels` pixels, or a longer side more than `max_ratio` times the shorter one (as stored: the
    model's image processor refuses it, see `aspect_ratio_limit`), is an error. The file's own bytes are kept
    where they already show as stored (8-bit RGB, upright, within the limit); otherwise the normalised picture
    is stored as PNG."""
    from PIL import Image

    reference = quoted(reference or location)
    data = read_image(location, reference)
    decoded = decode(data, reference)
    picture = as_viewed(decoded)
    viewed = width, height = picture.size
    if min_pixels and width * height < min_pixels:
        raise RowError(f"image {reference!r}: {width}x{height} = {width * height} pixels, fewer than "
                       f"data.image_min_pixels ({min_pixels}); use a larger image, or lower the limit")
    suffix = FORMATS[decoded.format]
    if max_pixels and width * height > max_pixels:
        scale = (max_pixels / (width * height)) ** 0.5
        width, height = max(1, int(width * scale)), max(1, int(height * scale))
        picture = picture.resize((width, height), Image.Resampling.BICUBIC)
    if max_ratio and max(width, height) / min(width, height) > max_ratio:
        size = f"{width}x{height}"
        if (width, height) != viewed:
            size = f"{viewed[0]}x{viewed[1]} (scaled to {size} by data.image_max_pixels)"
        raise RowError(f"image {reference!r}: {size} has an aspect ratio of "
                       f"{max(width, height) / min(width, height):.4g}:1, above the {max_ratio:g}:1 the model's image "
                       "processor accepts; crop it, pad it towards a square or cut it into tiles")
    if (picture.size != decoded.size or decoded.mode != "RGB" or "transparency" in decoded.info
            or orientation(decoded) not in (None, 1)):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        data, suffix = buffer.getvalue(), ".png"
    return StoredImage(data, hashlib.sha256(data).hexdigest()[:20] + suffix, width, height)


def quoted(reference: str) -> str:
    """An image reference as errors quote it: the start of a data URI, any other reference whole."""
    return reference[:40] + "..." if reference.startswith("data:") and len(reference) > 40 else reference


def orientation(picture) -> int | None:
    """The EXIF orientation tag (1 is upright), or None."""
    return picture.getexif().get(0x0112)


def read_image(location: str, reference: str) -> bytes:
    """The bytes of a data URI, or of a local file that lies under a dependency of prepare."""
    if location.startswith("data:"):
        header, _, payload = location.partition(",")
        if not header.endswith(";base64"):
            raise RowError(f"image {reference!r}: only base64 data URIs are supported "
                           "(data:image/png;base64,...)")
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error:
            raise RowError(f"image {reference!r}: the base64 payload does not decode") from None
    if location.startswith(("http://", "https://")):
        raise RowError(f"image {reference!r}: remote images are not downloaded; save it under data/raw/ and "
                       "refer to it by path")
    path = Path(location)
    if not path.is_file():
        raise RowError(f"image {reference!r}: no such file ({path}); image paths are relative to the data file")
    from slothline.dvcfile import undeclared  # prepare's contract, which only prepare checks

    problem = undeclared("prepare", path)
    if problem:
        raise RowError(f"image {reference!r}: {problem}", skippable=False)
    try:
        return path.read_bytes()
    except OSError as err:
        raise RowError(f"image {reference!r}: cannot read {path} ({err.strerror})") from None


def decode(data: bytes, reference: str):
    """The decoded picture; unreadable, corrupt and unsupported files are row errors."""
    from PIL import Image, UnidentifiedImageError

    supported = ", ".join(name for name in FORMATS if name != "MPO")
    try:
        picture = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise RowError(f"image {reference!r}: not an image file of a supported format ({supported})") from None
    except Image.DecompressionBombError as err:
        raise RowError(f"image {reference!r}: too large to decode safely ({err})") from None
    if picture.format not in FORMATS:
        raise RowError(f"image {reference!r}: {picture.format} images are not supported; convert it to one of "
                       f"{supported}")
    try:
        picture.load()
    except (OSError, SyntaxError, ValueError) as err:
        raise RowError(f"image {reference!r}: corrupt or truncated {picture.format} file ({err}); "
                       "replace the file or drop the row") from None
    return picture


def size_statistics(sizes: list[tuple[int, int]]) -> dict:
    """Count and width/height min/mean/max (pixels) of a split's images."""
    if not sizes:
        return {"images": 0}
    widths, heights = zip(*sizes)
    stats = {"images": len(sizes)}
    for name, values in (("width", widths), ("height", heights)):
        stats.update({f"{name}_min": min(values), f"{name}_mean": round(sum(values) / len(values), 1),
                      f"{name}_max": max(values)})
    return stats


def open_rgb(path):
    """The image file at `path` as 8-bit RGB, as a viewer shows it (`as_viewed`)."""
    from PIL import Image

    with Image.open(path) as picture:
        return as_viewed(picture)


def as_viewed(picture):
    """THE image normaliser, used on every path (prepare's checks, sizes and resizing; training; evaluate;
    thumbnails): 8-bit RGB as a viewer shows the picture. Turned by its EXIF orientation; 16-bit grayscale
    (medical and scientific PNGs) scaled to 8 bits, which Pillow's convert would clip to white; transparent
    pixels composited on white, as viewers and Qwen's image utilities show them."""
    import numpy as np
    from PIL import Image, ImageOps

    picture = ImageOps.exif_transpose(picture)
    if picture.mode.startswith("I"):  # I;16, I;16B, I: integer grayscale
        values = np.asarray(picture, dtype=np.float64)
        if values.max() > 255:
            values = values / 257
        picture = Image.fromarray(np.clip(values, 0, 255).astype(np.uint8), "L")
    if picture.mode in ("RGBA", "LA", "PA") or "transparency" in picture.info:  # an alpha band, or a colour key
        rgba = picture.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return picture.convert("RGB")


def thumbnail(path: Path, out_file: Path, size: int = 96) -> None:
    """A PNG copy of the image at `path` that fits in size x size pixels."""
    picture = open_rgb(path)
    picture.thumbnail((size, size))
    picture.save(out_file, format="PNG")

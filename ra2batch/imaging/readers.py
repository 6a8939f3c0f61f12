"""Radiograph bytes -> pixel levels (bone bright) and non-identifying metadata.

One entry point, ``decode(data, name)``, for JPEG, 8/16-bit PNG and DICOM. Every failure is an
``ImageDecodeError`` with a one-line reason: empty or truncated files, files that are not images,
DICOM without pixel data or in a transfer syntax no installed decoder handles, and images that are
not radiographs: decompression bombs and absurd sizes or shapes, refused from the header before any
pixel is decoded; blank or uniform images; a JPEG whose data ends before the size its header claims
(the decoder fills the rest). DICOM identifying attributes (PatientName, PatientID, birth date,
accession number...) never leave this module.

DICOM grey values are displayed as the file says, by pydicom's own functions: the Modality LUT or
rescale (``apply_modality_lut``), then the VOI LUT or the first Window Center / Width
(``apply_voi_lut``; a VOI LUT before a window, as pydicom chooses), so a value below the window is
black and one above it white; MONOCHROME1 is inverted after that (bone bright). A file without a
VOI LUT or window, or with one pydicom cannot apply (``meta["voi"]`` says why), is shown over its
whole stored range. Colour DICOM becomes luminance over its full range, without either.

Pixels stay integer levels (``uint8`` for 8-bit sources, ``uint16`` otherwise): a quarter (a half)
of float32's memory, never a float64 copy of the image. With ``max_side``, an image larger than
that is decoded at reduced resolution (a JPEG straight from its DCT, others by area averaging), so a
100-megapixel file costs about what a 17-megapixel one does; ``Radiograph.scale`` says by how much.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, Callable

import numpy as np

#: Largest image accepted (width x height x frames), checked from the header before decoding.
MAX_PIXELS = 100_000_000
#: The shorter side of a radiograph, in pixels, at least; the longer one at most this many times it.
MIN_SIDE = 16
MAX_ASPECT = 8.0
#: An image whose 1st and 99th percentile levels lie closer than this (of the full range) is blank.
MIN_CONTRAST = 0.02
#: A JPEG whose last rows, this share of its height or more, are one flat fill ended early.
MAX_FILL_ROWS = 0.25
#: Longest side the scoring job and the report decode a radiograph at, in pixels: larger files (RA2's
#: are 1000-2500 px) are decoded at reduced resolution, which the models do not miss (the detector
#: sees at most 1400 px, a joint crop a few hundred) and which bounds an actor's memory.
SCORING_MAX_SIDE = 4096
#: Pixels of a DICOM image displayed at a time (pydicom's transforms work in float64: 32 MiB a copy).
BAND_PIXELS = 1 << 22
#: DICOM values larger than this (the pixel data) are read from the file's bytes only when decoded.
DEFER_BYTES = 1 << 20

PIL_SUFFIXES = (".jpg", ".jpeg", ".png")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES


class ImageDecodeError(ValueError):
    """The bytes are not a radiograph this module can read; the message says why."""


@dataclass
class Radiograph:
    """Decoded radiograph: ``levels`` H x W, ``uint8`` (8-bit sources, level / 255) or ``uint16``
    (level / 65535), bone bright (MONOCHROME2 sense); ``pixels`` the same as float32 in [0, 1].

    ``bits`` is the stored depth (8 or 16 for PIL images, BitsStored for DICOM); ``meta`` holds
    only non-identifying values (format, photometric, modality, transfer syntax, frames...).
    ``original_size`` is the file's ``(width, height)``; ``scale`` the decoded pixels per file pixel
    (1.0 unless decoded at reduced resolution).
    """

    levels: np.ndarray
    bits: int
    format: str
    meta: dict[str, Any] = field(default_factory=dict)
    original_size: tuple[int, int] = (0, 0)

    @property
    def pixels(self) -> np.ndarray:
        return to_pixels(self.levels)

    @property
    def height(self) -> int:
        return int(self.levels.shape[0])

    @property
    def width(self) -> int:
        return int(self.levels.shape[1])

    @property
    def scale(self) -> float:
        return self.width / self.original_size[0] if self.original_size[0] else 1.0


# Level -> [0, 1] float32, one table per depth: ``level / 255`` and ``level / 65535``.
_LEVELS = {np.dtype(np.uint8): (np.arange(2**8) / (2**8 - 1)).astype(np.float32),
           np.dtype(np.uint16): (np.arange(2**16) / (2**16 - 1)).astype(np.float32)}


def to_pixels(levels: np.ndarray) -> np.ndarray:
    """``uint8`` or ``uint16`` levels as float32 in [0, 1]: what the models see."""
    return _LEVELS[levels.dtype][levels]


def is_dicom(data: bytes, name: str = "") -> bool:
    """DICOM by suffix or by the ``DICM`` marker after the 128-byte preamble."""
    return PurePosixPath(name).suffix.lower() in DICOM_SUFFIXES or data[128:132] == b"DICM"


def decode(data: bytes, name: str, *, max_pixels: int = MAX_PIXELS, max_side: int | None = None) -> Radiograph:
    """Decode ``data`` (the bytes of file ``name``) into a :class:`Radiograph`, at most ``max_side``
    pixels on its longer side when given (see the module's notes).

    The format is chosen by the ``DICM`` marker or the suffix of ``name`` (case-insensitive;
    ``.jpg .jpeg .png .dcm .dicom``). Raises ``ImageDecodeError`` for anything unreadable or that
    is not a radiograph.
    """
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    if is_dicom(data, name):
        image = _decode_dicom(data, name, max_pixels, max_side)
    else:
        suffix = PurePosixPath(name).suffix.lower()
        if suffix not in PIL_SUFFIXES:
            raise ImageDecodeError(f"{name}: unsupported file type {suffix or '(no suffix)'}; expected one of "
                                   f"{' '.join(SUPPORTED_SUFFIXES)} or a DICOM file with a DICM preamble")
        image = _decode_pil(data, name, max_pixels, max_side)
    _check_content(name, image)
    return image


def _reduced(width: int, height: int, max_side: int | None) -> tuple[int, int] | None:
    """The size to decode a ``width x height`` image at: ``None`` when it fits ``max_side``."""
    if not max_side or max(width, height) <= max_side:
        return None
    f = max_side / max(width, height)
    return max(1, round(width * f)), max(1, round(height * f))


def _check_content(name: str, image: Radiograph) -> None:
    """Refuse a blank or uniform image, and a JPEG whose data ends before its header's size."""
    levels = image.levels
    flat = np.ptp(levels, axis=1) == 0 if image.format == "jpeg" else None
    if flat is not None and (~flat).any():  # all flat: a uniform image, said below
        fill = len(flat) - int(np.flatnonzero(~flat)[-1]) - 1
        if fill >= MAX_FILL_ROWS * len(flat):
            w, h = image.original_size
            raise ImageDecodeError(f"{name}: the JPEG's data ends at about row {round((len(flat) - fill) / image.scale)} "
                                   f"of the {w} x {h} its header claims (the rest is the decoder's fill): truncated, "
                                   "or its header altered")
    step = max(1, int(np.sqrt(levels.size / 1_000_000)))  # percentiles of about a million pixels
    low, high = np.percentile(levels[::step, ::step], [1, 99])
    top = float(np.iinfo(levels.dtype).max)
    if high - low < MIN_CONTRAST * top:
        raise ImageDecodeError(f"{name}: blank or uniform image (98 % of its pixels within {(high - low) / top:.1%} "
                               f"of the full range, about {high / top:.2f}): not a radiograph")


def _decode_pil(data: bytes, name: str, max_pixels: int, max_side: int | None) -> Radiograph:
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))  # reads the header only
    except Image.DecompressionBombError as e:
        raise ImageDecodeError(f"{name}: refused as a possible decompression bomb ({e})") from e
    except UnidentifiedImageError as e:
        raise ImageDecodeError(f"{name}: not a readable JPEG/PNG image") from e
    except OSError as e:
        raise ImageDecodeError(f"{name}: truncated or corrupt image header ({e})") from e
    frames = int(getattr(img, "n_frames", 1))
    size = (img.width, img.height)
    _check_size(name, *size, 1, max_pixels)
    target = _reduced(*size, max_side)
    mode = img.mode
    if mode == "F":
        raise ImageDecodeError(f"{name}: floating-point images are not supported")
    sixteen = mode in ("I;16", "I;16B", "I;16L", "I")
    if not sixteen and mode not in ("L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "1"):
        raise ImageDecodeError(f"{name}: unsupported image mode {mode}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            if target and img.format == "JPEG":
                img.draft("L", target)  # the DCT decodes at 1/2, 1/4 or 1/8 of the size, at least target
            img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for corrupt streams
        raise ImageDecodeError(f"{name}: truncated or corrupt {img.format} data ({type(e).__name__}: {e})") from e
    source = img.format or "unknown"
    if sixteen:
        if img.mode != "I;16":  # 32-bit "I" or byte-swapped 16-bit
            img = Image.fromarray(np.clip(np.asarray(img), 0, 65535).astype(np.uint16))
    else:
        img = img.convert("L")  # colour -> ITU-R 601 luminance
    if target and img.size != target:
        img = img.resize(target, Image.Resampling.BOX)  # area average: the detector and crops see no aliasing
    meta = {"format": source.lower(), "mode": mode, "frames": frames}
    fmt = {"JPEG": "jpeg", "PNG": "png"}.get(source, source.lower())
    return Radiograph(np.asarray(img, dtype=np.uint16 if sixteen else np.uint8), 16 if sixteen else 8, fmt, meta, size)


def _check_size(name: str, width: int, height: int, frames: int, max_pixels: int) -> None:
    """Refuse from the header alone what cannot be a radiograph: no pixels, too many (a decompression
    bomb), a side too short or a shape too long."""
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{name}: image has no pixels ({width} x {height})")
    if width * height * frames > max_pixels:
        raise ImageDecodeError(
            f"{name}: {width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
            + f" = {width * height * frames / 1e6:.0f} megapixels exceeds the limit of {max_pixels / 1e6:g} "
            "megapixels (possible decompression bomb)")
    if min(width, height) < MIN_SIDE:
        raise ImageDecodeError(f"{name}: {width} x {height} pixels is too small for a radiograph (its shorter side "
                               f"must be at least {MIN_SIDE} pixels)")
    if max(width, height) > MAX_ASPECT * min(width, height):
        raise ImageDecodeError(f"{name}: {width} x {height} pixels is not a radiograph's shape (sides "
                               f"{max(width, height) / min(width, height):.0f}:1; at most {MAX_ASPECT:g}:1)")


def _decode_dicom(data: bytes, name: str, max_pixels: int, max_side: int | None) -> Radiograph:
    import pydicom
    from pydicom.errors import InvalidDicomError
    from pydicom.pixels import pixel_array

    preamble = data[128:132] == b"DICM"
    try:
        # with the file's preamble, large values (the pixel data) are left in ``data`` until decoded
        ds = pydicom.dcmread(io.BytesIO(data), force=not preamble, defer_size=DEFER_BYTES if preamble else None)
    except InvalidDicomError as e:
        raise ImageDecodeError(f"{name}: not a valid DICOM file ({e})") from e
    except Exception as e:  # truncated headers surface as EOFError, OSError, ValueError...
        raise ImageDecodeError(f"{name}: truncated or corrupt DICOM header ({type(e).__name__}: {e})") from e
    if "PixelData" not in ds:
        if "FloatPixelData" in ds or "DoubleFloatPixelData" in ds:
            raise ImageDecodeError(f"{name}: DICOM float pixel data is not supported")
        raise ImageDecodeError(f"{name}: DICOM file has no pixel data (not an image object)")
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        bits = int(ds.get("BitsStored", ds.BitsAllocated))
        samples = int(ds.get("SamplesPerPixel", 1))
        photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    except (AttributeError, TypeError, ValueError) as e:
        raise ImageDecodeError(f"{name}: DICOM image attributes missing or invalid ({e})") from e
    _check_size(name, cols, rows, frames, max_pixels)
    file_meta = getattr(ds, "file_meta", None)
    ts = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    ts_name = getattr(ts, "name", str(ts)) if ts else "Implicit VR Little Endian (assumed)"
    if ts is not None and ts.is_compressed:
        from pydicom.pixels import get_decoder

        try:
            available = get_decoder(ts).is_available
        except NotImplementedError:
            available = False
        if not available:
            raise ImageDecodeError(
                f"{name}: DICOM transfer syntax {ts_name} ({ts}) cannot be decoded with the installed plugins; "
                "install pylibjpeg with pylibjpeg-libjpeg (JPEG, JPEG-LS), pylibjpeg-openjpeg (JPEG 2000) "
                "or pylibjpeg-rle (RLE)")
    try:
        # the first frame, straight from the file's bytes (no second copy of the pixel data)
        arr = pixel_array(io.BytesIO(data) if preamble else ds, index=0)
    except Exception as e:  # pydicom raises many types for short or corrupt pixel data
        raise ImageDecodeError(f"{name}: cannot decode DICOM pixel data ({ts_name}): {type(e).__name__}: {e}") from e
    colour = samples > 1 or arr.ndim == 3
    if colour:
        invert, display, voi = False, _luminance, None
        black, white = 0.0, float(2 ** int(ds.BitsAllocated) - 1)
    else:
        display, black, white, voi = _grey_display(ds, name, bits)
        invert = photometric == "MONOCHROME1"
    # a band of rows at a time, never the whole image in floats; 16-bit grey levels overwrite their
    # source, 8-bit colour becomes 8-bit levels
    dtype = np.uint8 if colour and int(ds.BitsAllocated) == 8 else np.uint16
    full = float(np.iinfo(dtype).max)
    in_place = not colour and arr.dtype == np.uint16 and arr.flags.writeable
    levels = arr if in_place else np.empty(arr.shape[:2], dtype)
    rows_per_band = max(1, BAND_PIXELS // arr.shape[1])
    with warnings.catch_warnings():  # a VOI LUT indexed by rescaled (float) values: pydicom truncates them
        warnings.filterwarnings("ignore", "Applying a VOI LUT on a float input")
        for top in range(0, arr.shape[0], rows_per_band):
            band = display(arr[top:top + rows_per_band]) - black  # a new float array, scaled in place
            band *= full / ((white - black) or 1e-12)
            np.rint(np.clip(band, 0.0, full, out=band), out=band)
            levels[top:top + rows_per_band] = full - band if invert else band
    del arr, band
    size = (levels.shape[1], levels.shape[0])
    target = _reduced(*size, max_side)
    if target:
        from PIL import Image

        levels = np.asarray(Image.fromarray(levels).resize(target, Image.Resampling.BOX), dtype=levels.dtype)
    meta = {
        "format": "dicom",
        "transfer_syntax": str(ts) if ts else None,
        "photometric": photometric,
        "modality": str(ds.get("Modality", "")) or None,
        "bits_allocated": int(ds.get("BitsAllocated", bits)),
        "bits_stored": bits,
        "frames": frames,
        "body_part": str(ds.get("BodyPartExamined", "")) or None,
        "laterality": str(ds.get("ImageLaterality", ds.get("Laterality", ""))) or None,
        "view_position": str(ds.get("ViewPosition", "")) or None,
        "voi": voi,
    }
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing:
        meta["pixel_spacing_mm"] = [float(x) for x in spacing]
    return Radiograph(levels, bits, "dicom", meta, size)


Display = Callable[[np.ndarray], np.ndarray]


def _grey_display(ds: Any, name: str, bits: int) -> tuple[Display, float, float, str | None]:
    """How grey stored values are displayed, by pydicom's own functions: ``display(stored) -> values``
    (``apply_modality_lut``, then ``apply_voi_lut``), the values that are black and white, and which VOI
    was applied (``"lut"``, ``"window"``, ``None``, or why the file's could not be).

    With a VOI LUT or window, black and white are its outputs for the lowest and highest input (the
    window's ends, the LUT's first and last entries), so values below the window are black and above
    it white; without one, the stored range through the modality transform (lower value black).
    """
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    signed = int(ds.get("PixelRepresentation", 0)) == 1
    stored = np.array([-(2 ** (bits - 1)), 2 ** (bits - 1) - 1] if signed else [0, 2 ** bits - 1])
    try:
        black, white = sorted(float(v) for v in apply_modality_lut(stored, ds))
    except Exception as e:  # a malformed Modality LUT or rescale: the values have no known meaning
        raise ImageDecodeError(f"{name}: DICOM Modality LUT or rescale cannot be applied "
                               f"({type(e).__name__}: {e})") from e
    voi = _voi_ends(ds)
    if isinstance(voi, tuple):
        kind, black, white = voi
        return lambda a: apply_voi_lut(apply_modality_lut(a, ds), ds), black, white, kind
    return lambda a: apply_modality_lut(a, ds), black, white, voi


def _voi_ends(ds: Any) -> tuple[str, float, float] | str | None:
    """``(kind, black, white)`` of the VOI transform pydicom's ``apply_voi_lut`` applies (a VOI LUT
    before a window, the first of several), probed with its lowest and highest inputs; ``None``
    without one, or why it cannot be applied (a window of width 0, a LUT of 9-bit entries...)."""
    from pydicom.pixels import apply_voi_lut

    lut = (ds.get("VOILUTSequence") or [None])[0]
    if lut is not None and None not in (lut.get("LUTDescriptor"), lut.get("LUTData")):  # apply_voi_lut's test
        entries, first = int(lut.LUTDescriptor[0]) or 2**16, int(lut.LUTDescriptor[1])
        kind, probe = "lut", np.array([first, first + entries - 1])
    else:
        kind, probe = "window", np.array([-np.inf, np.inf])
    try:
        ends = apply_voi_lut(probe, ds)
    except Exception as e:  # a broken display hint: the file is still a radiograph, shown in full
        return f"{kind} not applied ({type(e).__name__}: {str(e).splitlines()[0]})"
    return None if ends is probe else (kind, float(ends[0]), float(ends[1]))


def _luminance(arr: np.ndarray) -> np.ndarray:
    """Colour DICOM rows (H x W x 3) to ITU-R 601 luminance (float32 H x W), in the stored value range
    (pydicom returns YBR as RGB)."""
    arr = arr.astype(np.float32)
    return 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]

"""Radiograph bytes -> float32 pixels (bone bright, [0, 1]) and non-identifying metadata.

One entry point, ``decode(data, name)``, for JPEG, 8/16-bit PNG and DICOM. Every failure is an
``ImageDecodeError`` with a one-line reason: empty or truncated files, files that are not images,
DICOM without pixel data or in a transfer syntax no installed decoder handles, and decompression
bombs, refused from the header before any pixel is decoded. DICOM identifying attributes
(PatientName, PatientID, birth date, accession number...) never leave this module.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

import numpy as np

#: Largest image accepted (width x height x frames), checked from the header before decoding.
MAX_PIXELS = 100_000_000

PIL_SUFFIXES = (".jpg", ".jpeg", ".png")
DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED_SUFFIXES = PIL_SUFFIXES + DICOM_SUFFIXES


class ImageDecodeError(ValueError):
    """The bytes are not a radiograph this module can read; the message says why."""


@dataclass
class Radiograph:
    """Decoded radiograph: ``pixels`` float32 H x W in [0, 1], bone bright (MONOCHROME2 sense).

    ``bits`` is the stored depth (8 or 16 for PIL images, BitsStored for DICOM); ``meta`` holds
    only non-identifying values (format, photometric, modality, transfer syntax, frames...).
    """

    pixels: np.ndarray
    bits: int
    format: str
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])


def is_dicom(data: bytes, name: str = "") -> bool:
    """DICOM by suffix or by the ``DICM`` marker after the 128-byte preamble."""
    return PurePosixPath(name).suffix.lower() in DICOM_SUFFIXES or data[128:132] == b"DICM"


def decode(data: bytes, name: str, *, max_pixels: int = MAX_PIXELS) -> Radiograph:
    """Decode ``data`` (the bytes of file ``name``) into a :class:`Radiograph`.

    The format is chosen by the ``DICM`` marker or the suffix of ``name`` (case-insensitive;
    ``.jpg .jpeg .png .dcm .dicom``). Raises ``ImageDecodeError`` for anything unreadable.
    """
    if not data:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    if is_dicom(data, name):
        return _decode_dicom(data, name, max_pixels)
    suffix = PurePosixPath(name).suffix.lower()
    if suffix not in PIL_SUFFIXES:
        raise ImageDecodeError(f"{name}: unsupported file type {suffix or '(no suffix)'}; "
                               f"expected one of {' '.join(SUPPORTED_SUFFIXES)} or a DICOM file with a DICM preamble")
    return _decode_pil(data, name, max_pixels)


def _decode_pil(data: bytes, name: str, max_pixels: int) -> Radiograph:
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
    _check_size(name, img.width, img.height, 1, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()
    except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for corrupt streams
        raise ImageDecodeError(f"{name}: truncated or corrupt {img.format} data ({type(e).__name__}: {e})") from e
    mode = img.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        bits = 16
        arr = arr / 65535.0
    elif mode in ("L", "P", "RGB", "RGBA", "LA", "CMYK", "YCbCr", "1"):
        bits = 8
        arr = np.asarray(img.convert("L"), dtype=np.float64) / 255.0  # colour -> ITU-R 601 luminance
    elif mode == "F":
        raise ImageDecodeError(f"{name}: floating-point images are not supported")
    else:
        raise ImageDecodeError(f"{name}: unsupported image mode {mode}")
    meta = {"format": img.format.lower() if img.format else "unknown", "mode": mode, "frames": frames}
    fmt = "jpeg" if img.format == "JPEG" else "png" if img.format == "PNG" else (img.format or "unknown").lower()
    return Radiograph(np.clip(arr, 0.0, 1.0).astype(np.float32), bits, fmt, meta)


def _check_size(name: str, width: int, height: int, frames: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageDecodeError(f"{name}: image has no pixels ({width} x {height})")
    if width * height * frames > max_pixels:
        raise ImageDecodeError(
            f"{name}: {width} x {height}" + (f" x {frames} frames" if frames > 1 else "")
            + f" = {width * height * frames / 1e6:.0f} megapixels exceeds the limit of {max_pixels / 1e6:g} "
            "megapixels (possible decompression bomb)")


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> Radiograph:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(io.BytesIO(data), force=data[128:132] != b"DICM")
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
        arr = ds.pixel_array
    except Exception as e:  # pydicom raises many types for short or corrupt pixel data
        raise ImageDecodeError(f"{name}: cannot decode DICOM pixel data ({ts_name}): {type(e).__name__}: {e}") from e
    if frames > 1:
        arr = arr[0]
    if samples > 1 or arr.ndim == 3:
        arr = _luminance(arr)
        photometric_out = "MONOCHROME2"
        lo, hi = 0.0, float(2 ** int(ds.BitsAllocated) - 1)
    else:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
        signed = int(ds.get("PixelRepresentation", 0)) == 1
        smin, smax = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2 ** bits - 1)
        arr = arr.astype(np.float64) * slope + intercept
        lo, hi = sorted((smin * slope + intercept, smax * slope + intercept))
        photometric_out = photometric
    pixels = np.clip((arr - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    if photometric_out == "MONOCHROME1":
        pixels = 1.0 - pixels
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
    }
    spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
    if spacing:
        meta["pixel_spacing_mm"] = [float(x) for x in spacing]
    return Radiograph(pixels.astype(np.float32), bits, "dicom", meta)


def _luminance(arr: np.ndarray) -> np.ndarray:
    """Colour DICOM to ITU-R 601 luminance, in the stored value range (pydicom returns YBR as RGB)."""
    arr = arr.astype(np.float64)
    return 0.299 * arr[..., 0] + 0.587 * arr[..., 1] + 0.114 * arr[..., 2]

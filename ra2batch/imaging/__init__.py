"""Reading radiographs: bytes of JPEG, PNG or DICOM files -> float32 pixels and safe metadata."""

from .readers import MAX_PIXELS, SUPPORTED_SUFFIXES, ImageDecodeError, Radiograph, decode, is_dicom

__all__ = ["MAX_PIXELS", "SUPPORTED_SUFFIXES", "ImageDecodeError", "Radiograph", "decode", "is_dicom"]

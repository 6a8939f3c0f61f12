"""Encode a rendered radiograph as 8-bit JPEG, 16-bit PNG or DICOM (DX) bytes, deterministically.

DICOM files carry a realistic header with made-up identifying values (PatientName, PatientID,
PatientBirthDate, AccessionNumber...) so that downstream handling of identifying data can be tested.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

#: --formats name -> file extension.
FORMATS = {"jpg": ".jpg", "png16": ".png", "dcm": ".dcm"}

_SURNAMES = ("Jansen", "Smith", "Garcia", "Novak", "Okafor", "Tanaka", "Larsen", "Rossi", "Dubois", "Kowalski")
_GIVEN = ("Anna", "Ben", "Chloe", "David", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jonas")
_SOP_CLASS_DX = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def encode(pixels: np.ndarray, fmt: str, *, patient_id: str, limb: str, px_per_mm: float,
           rng: np.random.Generator) -> bytes:
    """``pixels`` float32 H x W in [0, 1] as file bytes of ``fmt`` (``jpg``, ``png16``, ``dcm``)."""
    if fmt == "jpg":
        buf = io.BytesIO()
        Image.fromarray(_quantise(pixels, 8).astype(np.uint8)).save(buf, "JPEG", quality=int(rng.integers(88, 96)))
        return buf.getvalue()
    if fmt == "png16":
        buf = io.BytesIO()
        Image.fromarray(_quantise(pixels, 16).astype(np.uint16)).save(buf, "PNG", compress_level=1)
        return buf.getvalue()
    if fmt == "dcm":
        return _dicom(pixels, patient_id, limb, px_per_mm, rng)
    raise ValueError(f"unknown image format {fmt!r}; expected one of {', '.join(FORMATS)}")


def _quantise(pixels: np.ndarray, bits: int) -> np.ndarray:
    return np.round(np.clip(pixels, 0.0, 1.0) * (2 ** bits - 1))


def _uid(rng: np.random.Generator) -> str:
    """A deterministic UUID-derived DICOM UID (2.25.<128-bit integer>)."""
    return "2.25." + str(int.from_bytes(rng.bytes(16), "big"))


def _dicom(pixels: np.ndarray, patient_id: str, limb: str, px_per_mm: float, rng: np.random.Generator) -> bytes:
    from pydicom.dataset import FileMetaDataset, Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    bits = int(rng.choice([12, 14, 16]))
    monochrome1 = rng.random() < 0.25
    stored = _quantise(pixels, bits)
    if monochrome1:  # bright = low values: the detector's raw sense on some systems
        stored = (2 ** bits - 1) - stored
    birth = f"{int(rng.integers(1935, 1995))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    study = f"{int(rng.integers(2008, 2021))}{int(rng.integers(1, 13)):02d}{int(rng.integers(1, 29)):02d}"
    study_uid, series_uid, sop_uid = _uid(rng), _uid(rng), _uid(rng)

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = _SOP_CLASS_DX
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = "1.2.826.0.1.3680043.10.1407.1"
    meta.ImplementationVersionName = "RA2BATCH_SYNTH"

    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = _SOP_CLASS_DX, sop_uid
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.PatientName = f"{_SURNAMES[int(rng.integers(len(_SURNAMES)))]}^{_GIVEN[int(rng.integers(len(_GIVEN)))]}"
    ds.PatientID = patient_id
    ds.PatientBirthDate = birth
    ds.PatientSex = str(rng.choice(["F", "M"]))
    ds.AccessionNumber = f"A{int(rng.integers(10 ** 7, 10 ** 8))}"
    ds.InstitutionName = "Synthetic General Hospital"
    ds.ReferringPhysicianName = "Doe^John"
    ds.StudyDate = ds.SeriesDate = ds.ContentDate = study
    ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
    ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "1", 1, 1
    ds.Modality = "DX"
    ds.Manufacturer = "ra2batch synthetic"
    ds.BodyPartExamined = "HAND" if limb[1] == "H" else "FOOT"
    ds.ImageLaterality = limb[0]
    ds.ViewPosition = "PA" if limb[1] == "H" else "AP"
    ds.PresentationIntentType = "FOR PRESENTATION"
    ds.ImagerPixelSpacing = ds.PixelSpacing = [f"{1 / px_per_mm:.4f}", f"{1 / px_per_mm:.4f}"]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME1" if monochrome1 else "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "0", "1", "US"
    ds.WindowCenter, ds.WindowWidth = str(2 ** (bits - 1)), str(2 ** bits)
    ds.PixelData = stored.astype("<u2").tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()

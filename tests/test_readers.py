"""ra2batch.imaging.readers: every supported format decodes to bone-bright [0, 1] pixels with the
right size and depth, identifying DICOM values never leak, and every bad input fails clearly."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels import apply_modality_lut, apply_voi_lut
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from ra2batch.imaging.readers import ImageDecodeError, decode

#: DICOM levels are windowed to [0, 1] and kept as 16-bit levels: within half a level of the exact value.
HALF_LEVEL = 0.5 / 65535 + 1e-9
RAMP = np.tile(np.linspace(0, 1, 40, dtype=np.float32), (30, 1))  # 30 x 40, dark left, bright right


def _pil_bytes(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **kw)
    return buf.getvalue()


def _dicom(stored: np.ndarray, *, bits: int = 12, photometric: str = "MONOCHROME2", slope: str | None = None,
           intercept: str | None = None, frames: int = 1, pixel_data: bool = True) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    meta.MediaStorageSOPInstanceUID = "2.25.1"
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, "2.25.1"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "Secret^Person", "MRN-12345", "19500101"
    ds.AccessionNumber = "ACC999"
    ds.Modality, ds.BodyPartExamined, ds.ImageLaterality = "DX", "HAND", "L"
    ds.Rows, ds.Columns = stored.shape[-2:]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames
    if slope is not None:
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if pixel_data:
        ds.PixelData = stored.astype("<u2").tobytes()
    return ds


def _save(ds: Dataset) -> bytes:
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_jpeg_reads_as_8_bit_luminance():
    rad = decode(_pil_bytes((RAMP * 255).astype(np.uint8), "JPEG", quality=95), "x.JPG")
    assert (rad.width, rad.height, rad.bits, rad.format) == (40, 30, 8, "jpeg")
    assert rad.pixels.dtype == np.float32 and 0 <= rad.pixels.min() and rad.pixels.max() <= 1
    assert np.abs(rad.pixels - RAMP).max() < 0.05


def test_png16_keeps_all_16_bits():
    stored = (RAMP * 65535).astype(np.uint16)
    rad = decode(_pil_bytes(stored, "PNG"), "x.png")
    assert (rad.width, rad.height, rad.bits, rad.format) == (40, 30, 16, "png")
    np.testing.assert_allclose(rad.pixels, stored / 65535.0, atol=1e-6)


def test_colour_png_becomes_luminance():
    rgb = np.zeros((30, 40, 3), np.uint8)
    rgb[..., 1] = np.round(RAMP * 200)  # a green ramp
    rad = decode(_pil_bytes(rgb, "PNG"), "colour.png")
    assert rad.pixels.shape == (30, 40) and rad.bits == 8 and rad.levels.dtype == np.uint8
    np.testing.assert_allclose(rad.pixels, 0.587 * np.round(RAMP * 200) / 255, atol=0.01)


def test_dicom_monochrome2_normalised_by_bits_stored_without_identifying_meta():
    stored = np.round(RAMP * 4095).astype(np.uint16)
    rad = decode(_save(_dicom(stored, bits=12)), "scan.dcm")
    assert (rad.width, rad.height, rad.bits, rad.format) == (40, 30, 12, "dicom")
    np.testing.assert_allclose(rad.pixels, stored / 4095.0, atol=HALF_LEVEL)
    assert rad.meta["photometric"] == "MONOCHROME2" and rad.meta["modality"] == "DX"
    text = repr(rad.meta)
    for secret in ("Secret", "MRN-12345", "19500101", "ACC999"):
        assert secret not in text


def test_dicom_monochrome1_is_inverted_and_rescale_applied():
    stored = np.round(RAMP * 4095).astype(np.uint16)
    mono1 = decode(_save(_dicom(4095 - stored, bits=12, photometric="MONOCHROME1")), "m1.dcm")
    np.testing.assert_allclose(mono1.pixels, stored / 4095.0, atol=HALF_LEVEL)  # bone bright again
    rescaled = decode(_save(_dicom(stored, bits=12, slope="2", intercept="-1000")), "r.dcm")
    np.testing.assert_allclose(rescaled.pixels, stored / 4095.0, atol=HALF_LEVEL)  # linear rescale keeps [0, 1]


def _windowed(ds: Dataset, stored: np.ndarray) -> np.ndarray:
    """``stored`` as pydicom windows it (modality LUT, then VOI LUT or window), in [0, 1] of the VOI's
    output range (pydicom's own y_min..y_max for a window, the LUT's first..last entry for a LUT)."""
    values = apply_voi_lut(apply_modality_lut(stored, ds), ds)
    if "VOILUTSequence" in ds:
        lut = np.frombuffer(ds.VOILUTSequence[0].LUTData, "<u2")
        low, high = float(lut[0]), float(lut[-1])
    else:
        low, high = apply_modality_lut(np.array([0, 2 ** ds.BitsStored - 1]), ds)
    return (values - low) / (high - low)


@pytest.mark.parametrize("rescale", [None, ("2", "-1000")], ids=["stored", "rescaled"])
def test_dicom_window_applied_as_pydicom_windows(rescale):
    stored = np.round(RAMP * 4095).astype(np.uint16)
    slope, intercept = rescale or (None, None)
    ds = _dicom(stored, bits=12, slope=slope, intercept=intercept)
    centre = 2048 if rescale is None else 2048 * 2 - 1000
    ds.WindowCenter, ds.WindowWidth = [centre, 1], [1024 * (2 if rescale else 1), 1]  # the first of two is used
    rad = decode(_save(ds), "windowed.dcm")
    expected = _windowed(ds, stored)
    np.testing.assert_allclose(rad.pixels, expected, atol=HALF_LEVEL)
    assert rad.meta["voi"] == "window"
    below, above = stored < 1536, stored > 2560
    assert below.any() and above.any() and (rad.pixels[below] == 0).all() and (rad.pixels[above] == 1).all()
    assert 0.05 < rad.pixels[~below & ~above].mean() < 0.95  # a ramp inside the window


def test_dicom_voi_lut_sequence_applied_before_a_window():
    stored = np.round(RAMP * 4095).astype(np.uint16)
    ds = _dicom(stored, bits=12)
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = np.round(65535 * np.sqrt(np.arange(4096) / 4095)).astype("<u2").tobytes()  # a gamma curve
    ds.VOILUTSequence = [item]
    ds.WindowCenter, ds.WindowWidth = 100, 10  # ignored: pydicom prefers the LUT
    rad = decode(_save(ds), "lut.dcm")
    assert rad.meta["voi"] == "lut"
    np.testing.assert_allclose(rad.pixels, _windowed(ds, stored), atol=HALF_LEVEL)
    np.testing.assert_allclose(rad.pixels, np.sqrt(stored / 4095), atol=1e-4)


def test_dicom_monochrome1_windowed_then_inverted():
    stored = np.round(RAMP * 4095).astype(np.uint16)
    ds = _dicom(4095 - stored, bits=12, photometric="MONOCHROME1")
    ds.WindowCenter, ds.WindowWidth = 2048, 1024
    rad = decode(_save(ds), "m1w.dcm")
    np.testing.assert_allclose(rad.pixels, 1 - _windowed(ds, 4095 - stored), atol=HALF_LEVEL)
    assert rad.pixels[:, 0].max() == 0 and rad.pixels[:, -1].min() == 1  # bone (low MONOCHROME1 values) bright


def test_dicom_window_pydicom_cannot_apply_falls_back_to_the_stored_range():
    stored = np.round(RAMP * 4095).astype(np.uint16)
    ds = _dicom(stored, bits=12)
    ds.WindowCenter, ds.WindowWidth = 2048, 0  # LINEAR needs a width of at least 1
    rad = decode(_save(ds), "badwindow.dcm")
    np.testing.assert_allclose(rad.pixels, stored / 4095.0, atol=HALF_LEVEL)
    assert rad.meta["voi"].startswith("window not applied (ValueError: The (0028,1051) Window Width")
    assert decode(_save(_dicom(stored, bits=12)), "plain.dcm").meta["voi"] is None


def test_dicom_recognised_by_preamble_without_suffix():
    stored = np.round(RAMP * 65535).astype(np.uint16)
    rad = decode(_save(_dicom(stored, bits=16)), "IM000001")
    assert rad.format == "dicom" and rad.bits == 16


def test_multiframe_dicom_gives_first_frame():
    frames = np.stack([np.round(RAMP * 4095), np.zeros_like(RAMP), np.full_like(RAMP, 4095)]).astype(np.uint16)
    rad = decode(_save(_dicom(frames, frames=3)), "cine.dcm")
    assert rad.pixels.shape == (30, 40) and rad.meta["frames"] == 3
    np.testing.assert_allclose(rad.pixels, frames[0] / 4095.0, atol=HALF_LEVEL)


@pytest.mark.parametrize("syntax", [RLELossless, JPEG2000Lossless], ids=["rle", "jpeg2000"])
def test_compressed_dicom_decodes_losslessly(syntax):
    stored = np.round(np.tile(np.linspace(0, 4095, 96), (64, 1))).astype(np.uint16)  # OpenJPEG needs >= 64 px
    ds = _dicom(stored, bits=12)
    try:
        ds.compress(syntax, stored, encoding_plugin="pydicom" if syntax == RLELossless else "")
    except (RuntimeError, ValueError) as e:  # encoder plugin missing in this environment
        pytest.skip(f"no encoder for {syntax.name}: {e}")
    rad = decode(_save(ds), "c.dcm")
    assert rad.meta["transfer_syntax"] == str(syntax) and rad.bits == 12 and rad.pixels.shape == (64, 96)
    np.testing.assert_allclose(rad.pixels, stored / 4095.0, atol=HALF_LEVEL)


def test_unsupported_transfer_syntax_names_it_and_the_plugins():
    ds = _dicom(np.zeros((30, 40), np.uint16))
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"  # MPEG2: no decoder exists
    ds.PixelData = encapsulate([b"\x00" * 64])
    with pytest.raises(ImageDecodeError, match=r"1\.2\.840\.10008\.1\.2\.4\.100.*pylibjpeg"):
        decode(_save(ds), "video.dcm")


@pytest.mark.parametrize(
    "data, name, message",
    [
        (b"", "empty.jpg", "empty file"),
        (b"this is a report, not an image", "notes.png", "not a readable"),
        (b"GIF89a....", "anim.gif", "unsupported file type"),
    ],
    ids=["zero-bytes", "not-an-image", "unsupported-suffix"],
)
def test_bad_bytes_raise_clear_errors(data, name, message):
    with pytest.raises(ImageDecodeError, match=message):
        decode(data, name)


def test_truncated_jpeg_and_dicom_raise():
    jpeg = _pil_bytes((RAMP * 255).astype(np.uint8), "JPEG")
    with pytest.raises(ImageDecodeError, match="truncated"):
        decode(jpeg[: len(jpeg) // 2], "cut.jpg")
    dcm = _save(_dicom(np.round(RAMP * 4095).astype(np.uint16)))
    with pytest.raises(ImageDecodeError):
        decode(dcm[:-500], "cut.dcm")


def test_dicom_without_pixel_data_is_refused():
    with pytest.raises(ImageDecodeError, match="no pixel data"):
        decode(_save(_dicom(np.zeros((30, 40), np.uint16), pixel_data=False)), "sr.dcm")


def _png_claiming(width: int, height: int) -> bytes:
    """A PNG whose (valid-CRC) header claims ``width x height`` but holds almost no data."""
    png = bytearray(_pil_bytes(np.zeros((1, 1), np.uint8), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(png[24:29])
    png[16:29] = ihdr
    png[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr) & 0xFFFFFFFF)
    return bytes(png)


def test_decompression_bombs_refused_from_the_header():
    # the header claims 150 megapixels; the refusal must come before any pixel is decoded
    with pytest.raises(ImageDecodeError, match="megapixels"):
        decode(_png_claiming(15000, 10000), "bomb.png")
    ds = _dicom(np.zeros((2, 2), np.uint16))
    ds.Rows = ds.Columns = 20000
    with pytest.raises(ImageDecodeError, match="megapixels"):
        decode(_save(ds), "bomb.dcm")
    with pytest.raises(ImageDecodeError, match="limit of 0.001 megapixels"):
        decode(_pil_bytes((RAMP * 255).astype(np.uint8), "PNG"), "small.png", max_pixels=1000)


def test_images_that_are_not_radiographs_are_refused():
    """Blank or uniform images, absurd sizes and shapes, a JPEG whose header claims more than its data."""
    for data, name in ((_pil_bytes(np.zeros((300, 200), np.uint8), "PNG"), "black.png"),
                       (_pil_bytes(np.full((300, 200), 255, np.uint8), "JPEG"), "white.jpg"),
                       (_pil_bytes(np.full((300, 200), 30000, np.uint16), "PNG"), "grey16.png"),
                       (_save(_dicom(np.full((60, 80), 1000, np.uint16))), "flat.dcm")):
        with pytest.raises(ImageDecodeError, match=r"blank or uniform image .*: not a radiograph"):
            decode(data, name)
    noise = np.random.default_rng(0).integers(0, 255, (2, 3000), dtype=np.uint8)
    with pytest.raises(ImageDecodeError, match=r"3000 x 2 pixels is too small for a radiograph"):
        decode(_pil_bytes(noise, "PNG"), "thin.png")
    with pytest.raises(ImageDecodeError, match=r"3000 x 200 pixels is not a radiograph's shape \(sides 15:1"):
        decode(_pil_bytes(np.resize(noise, (200, 3000)), "PNG"), "strip.png")
    # a JPEG of 509 x 423 whose header claims 9500 x 9500: the decoder fills the rest with one flat value
    jpeg = bytearray(_pil_bytes(np.random.default_rng(1).integers(0, 255, (423, 509), dtype=np.uint8), "JPEG"))
    sof = jpeg.find(b"\xff\xc0")
    jpeg[sof + 5:sof + 9] = struct.pack(">HH", 9500, 9500)
    with pytest.raises(ImageDecodeError, match=r"the JPEG's data ends at about row \d+ of the 9500 x 9500 its header"):
        decode(bytes(jpeg), "forged.jpg", max_side=4096)


def test_colour_dicom_becomes_8_bit_luminance():
    rgb = np.stack([np.round(RAMP * 255), np.round(RAMP[::-1] * 200), np.full_like(RAMP, 40)], axis=2).astype(np.uint8)
    ds = _dicom(np.zeros(RAMP.shape, np.uint16))
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, "RGB", 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 8, 8, 7
    ds.PixelData = rgb.tobytes()
    rad = decode(_save(ds), "colour.dcm")
    expected = 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]
    assert rad.levels.dtype == np.uint8 and rad.bits == 8
    assert np.abs(rad.levels.astype(float) - expected).max() <= 0.5 + 1e-6


def test_large_images_decode_at_reduced_resolution():
    """``max_side`` bounds the decoded image: a JPEG straight from its DCT, others by area averaging; the
    original size and the scale are kept, and the content is the image's, smaller."""
    big = np.round(np.tile(np.linspace(0, 1, 800), (600, 1)) * 255).astype(np.uint8)  # 800 x 600 ramp
    cases = {"big.jpg": _pil_bytes(big, "JPEG", quality=95), "big.png": _pil_bytes(big.astype(np.uint16) * 257, "PNG"),
             "big.dcm": _save(_dicom(big.astype(np.uint16) * 16, bits=12))}
    for name, data in cases.items():
        rad = decode(data, name, max_side=200)
        assert (rad.width, rad.height) == (200, 150) and rad.original_size == (800, 600), name
        assert rad.scale == 0.25
        reference = big[2::4, 2::4] / 255.0  # the centres of the 4 x 4 blocks averaged
        assert np.abs(rad.pixels[:, 1:-1] - reference[:, 1:-1]).max() < 0.03, name
        assert rad.levels.dtype == (np.uint8 if name.endswith(".jpg") else np.uint16)
        full = decode(data, name)
        assert (full.width, full.height, full.scale) == (800, 600, 1.0)

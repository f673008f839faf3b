"""The fast DICOM JSON conversion gives exactly what pydicom's own conversion gives.

The reference below converts every element through pydicom (``Dataset[tag]`` and
``DataElement.to_json_dict``) and applies the archive's top-level bulk rules; the fast
``dataset_to_json`` must produce the same JSON (same keys in the same order, same value
types) or, where pydicom fails, a ``ValueError`` naming the tag.
"""

from __future__ import annotations

import io
import json
import os
import re
import warnings
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, reject, settings
from hypothesis import strategies as st
from pydicom import config, dcmread, dcmwrite
from pydicom.data import data_manager, get_charset_files, get_testdata_file, get_testdata_files
from pydicom.datadict import dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.hooks import hooks, raw_element_value, raw_element_value_fix_separator
from pydicom.tag import Tag
from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from openvna.archive.dicomjson import dataset_to_json, dataset_to_json_text

pytestmark = pytest.mark.filterwarnings("ignore")

THRESHOLD = 4096
_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}


# --------------------------------------------------------------------------------------
# Reference: pydicom's per-element conversion plus the archive's top-level bulk rules


class ReferenceFailedError(Exception):
    def __init__(self, key: str, error: Exception) -> None:
        super().__init__(f"{key}: {type(error).__name__}: {error}")
        self.tag_text = f"({key[:4]},{key[4:]})"


def _bulk_data_uri(element: DataElement) -> str:
    return f"bulkdata/{element.tag:08X}"


def _reference_vr(raw: DataElement | RawDataElement) -> str:
    if raw.VR:
        return str(raw.VR)
    try:
        vr = dictionary_VR(raw.tag)
    except KeyError:
        return "UN"
    return "OW" if "or" in vr else str(vr)


def reference_json(dataset: Dataset) -> dict[str, Any]:
    """pydicom's ``to_json_dict`` element by element, with the top-level bulk rules."""
    result: dict[str, Any] = {}
    for tag in sorted(dataset.keys()):
        raw = dataset.get_item(tag, keep_deferred=True)  # never read deferred values
        if Tag(tag).group == 0x0002:
            continue
        key = f"{tag:08X}"
        deferred = (
            isinstance(raw, RawDataElement)
            and raw.value is None
            and raw.length > 4096
            and _reference_vr(raw) != "SQ"  # a sequence is never bulk data (PS3.18 F.2.2)
        )
        if deferred or tag == 0x7FE00010:
            result[key] = {"vr": _reference_vr(raw), "BulkDataURI": f"bulkdata/{key}"}
            continue
        try:
            element = dataset[tag]
            value = element.value
            if element.VR in _BINARY_VRS and value is not None and len(value) > THRESHOLD:
                result[key] = {"vr": element.VR, "BulkDataURI": f"bulkdata/{key}"}
                continue
            result[key] = element.to_json_dict(
                bulk_data_element_handler=_bulk_data_uri, bulk_data_threshold=THRESHOLD
            )
        except Exception as error:
            raise ReferenceFailedError(key, error) from error
    return result


def _canonical(value: Any) -> str:
    """JSON text, keeping key order and int/float distinction; NaN compares equal."""
    return json.dumps(value, ensure_ascii=False, default=repr)


def _read(data: bytes) -> Dataset:
    return dcmread(io.BytesIO(data), defer_size=THRESHOLD, force=True)


def assert_same_as_reference(read: Any) -> None:
    """``read()`` gives a fresh data set each call; compare fast and reference JSON."""
    fresh, converted = read(), read()
    try:
        expected = reference_json(converted)
    except ReferenceFailedError as failure:
        with pytest.raises(ValueError, match=re.escape(failure.tag_text)):
            dataset_to_json(fresh)
        return
    assert _canonical(dataset_to_json(fresh)) == _canonical(expected)
    # elements pydicom already converted (the reference converted them all)
    assert _canonical(dataset_to_json(converted)) == _canonical(expected)
    try:
        expected_text = json.dumps(expected, separators=(",", ":"), ensure_ascii=False)
    except TypeError:
        return
    assert dataset_to_json_text(read()) == expected_text


# --------------------------------------------------------------------------------------
# Every data set bundled with pydicom


def _bundled_files() -> list[str]:
    """``get_testdata_files("*")`` and the charset files, without any download.

    pydicom offers further test files for download; only those already in its local
    cache are used, so that the tests run offline.
    """
    original = data_manager.data_path_with_download

    def cached_only(filename: str, *args: Any, **kwargs: Any) -> Path:
        from pydicom.data.download import get_data_dir

        path = get_data_dir() / filename
        if not path.is_file():
            raise FileNotFoundError(filename)
        return path

    data_manager.data_path_with_download = cached_only  # type: ignore[assignment]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            files = get_testdata_files("*") + get_charset_files("*")
    finally:
        data_manager.data_path_with_download = original  # type: ignore[assignment]
    return sorted({path for path in files if os.path.isfile(path)}, key=os.path.basename)


BUNDLED = _bundled_files()


def _read_file_or_skip(path: str) -> Dataset:
    try:
        return dcmread(path, defer_size=THRESHOLD, force=True)
    except Exception as error:
        pytest.skip(f"pydicom cannot read {os.path.basename(path)}: {error}")


@pytest.mark.parametrize("path", BUNDLED, ids=[os.path.basename(path) for path in BUNDLED])
def test_bundled_file_matches_pydicom(path: str) -> None:
    _read_file_or_skip(path)
    assert_same_as_reference(lambda: dcmread(path, defer_size=THRESHOLD, force=True))


def test_bundled_files_found() -> None:
    names = {os.path.basename(path) for path in BUNDLED}
    assert {"CT_small.dcm", "ExplVR_BigEndNoMeta.dcm", "chrH31.dcm"} <= names


def test_deferred_values_are_not_read() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    dataset = dcmread(path, defer_size=THRESHOLD)
    result = dataset_to_json(dataset)
    assert result["7FE00010"] == {"vr": "OW", "BulkDataURI": "bulkdata/7FE00010"}
    pixel_data = dataset.get_item(0x7FE00010, keep_deferred=True)
    assert isinstance(pixel_data, RawDataElement) and pixel_data.value is None
    assert all(not key.startswith("0002") for key in result)


def test_long_sequences_are_never_bulk_data() -> None:
    """pydicom defers a long sequence like any long value; DICOM JSON must still carry its
    items (a SEG's Referenced Series Sequence as a BulkDataURI broke OHIF)."""
    dataset = Dataset()
    dataset.SOPClassUID = "1.2.840.10008.5.1.4.1.1.66.4"
    dataset.SOPInstanceUID = "1.2.3"
    references = []
    for number in range(200):
        item = Dataset()
        item.ReferencedSOPClassUID = "1.2.840.10008.5.1.4.1.1.2"
        item.ReferencedSOPInstanceUID = f"1.2.3.{number}"
        references.append(item)
    series = Dataset()
    series.SeriesInstanceUID = "1.2.3.4"
    series.ReferencedInstanceSequence = references
    dataset.ReferencedSeriesSequence = [series]
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    dataset.file_meta.MediaStorageSOPClassUID = dataset.SOPClassUID
    dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
    stream = io.BytesIO()
    dcmwrite(stream, dataset, enforce_file_format=True)
    stream.seek(0)
    read = dcmread(stream, defer_size=THRESHOLD)
    deferred = read.get_item(0x00081115, keep_deferred=True)
    assert isinstance(deferred, RawDataElement) and deferred.value is None  # the case
    result = dataset_to_json(read)
    [series_json] = result["00081115"]["Value"]
    assert len(series_json["0008114A"]["Value"]) == 200
    assert series_json["0008114A"]["Value"][199]["00081155"]["Value"] == ["1.2.3.199"]


def test_ct_small_values() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    result = dataset_to_json(dcmread(path, defer_size=THRESHOLD))
    assert len(result) == 258  # every element of the data set (File Meta is apart)
    assert result["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert result["00280030"] == {"vr": "DS", "Value": [0.661468, 0.661468]}
    assert result["00280010"] == {"vr": "US", "Value": [128]}
    assert result["00200013"] == {"vr": "IS", "Value": [1]}
    assert result["00080008"] == {"vr": "CS", "Value": ["ORIGINAL", "PRIMARY", "AXIAL"]}


# --------------------------------------------------------------------------------------
# Character sets


def _dataset_with_name(charset: str, name: str, codec: str) -> bytes:
    dataset = Dataset()
    dataset.SpecificCharacterSet = charset
    dataset._dict[Tag(0x00100010)] = RawDataElement(
        Tag(0x00100010), "PN", 0, name.encode(codec), 0, False, True
    )
    dataset._dict[Tag(0x00081030)] = RawDataElement(
        Tag(0x00081030), "LO", 0, "Thorax\\Abdomen ".encode(codec), 0, False, True
    )
    dataset.set_original_encoding(False, True, dataset._character_set)
    return _write(dataset, implicit=False, little=True)


@pytest.mark.parametrize(
    ("charset", "codec", "name", "expected"),
    [
        ("ISO_IR 100", "latin-1", "MÜLLER^ANNA", {"Alphabetic": "MÜLLER^ANNA"}),
        (
            "ISO_IR 192",
            "utf-8",
            "Wang^XiaoDong=王^小東=",
            {"Alphabetic": "Wang^XiaoDong", "Ideographic": "王^小東"},
        ),
    ],
)
def test_charset_values(charset: str, codec: str, name: str, expected: dict[str, str]) -> None:
    data = _dataset_with_name(charset, name, codec)
    result = dataset_to_json(_read(data))
    assert result["00100010"] == {"vr": "PN", "Value": [expected]}
    assert result["00081030"] == {"vr": "LO", "Value": ["Thorax", "Abdomen"]}
    assert_same_as_reference(lambda: _read(data))


def test_japanese_iso_2022() -> None:
    [path] = get_charset_files("chrH31.dcm")
    result = dataset_to_json(dcmread(path, defer_size=THRESHOLD))
    assert result["00080005"] == {"vr": "CS", "Value": ["", "ISO 2022 IR 87"]}
    assert result["00100010"]["Value"] == [
        {"Alphabetic": "Yamada^Tarou", "Ideographic": "山田^太郎", "Phonetic": "やまだ^たろう"}
    ]
    assert_same_as_reference(lambda: dcmread(path, defer_size=THRESHOLD))


@pytest.mark.parametrize("name", [os.path.basename(p) for p in get_charset_files("*.dcm")])
def test_charset_files(name: str) -> None:
    [path] = get_charset_files(name)
    assert_same_as_reference(lambda: dcmread(path, defer_size=THRESHOLD))


# --------------------------------------------------------------------------------------
# Hand-picked raw values


def _write(dataset: Dataset, implicit: bool, little: bool) -> bytes:
    syntax = (
        ImplicitVRLittleEndian
        if implicit
        else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
    )
    dataset.file_meta = FileMetaDataset()
    dataset.file_meta.TransferSyntaxUID = syntax
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, implicit_vr=implicit, little_endian=little)
    return buffer.getvalue()


def _raw(tag: int, vr: str, value: bytes, implicit: bool, little: bool) -> RawDataElement:
    return RawDataElement(
        Tag(tag), None if implicit else vr, len(value), value, 0, implicit, little
    )


def _raw_dataset(elements: list[tuple[int, str, bytes]], implicit: bool, little: bool) -> Dataset:
    dataset = Dataset()
    for tag, vr, value in elements:
        dataset._dict[Tag(tag)] = _raw(tag, vr, value, implicit, little)
    dataset.set_original_encoding(implicit, little, dataset._character_set)
    return dataset


_CASES = [
    (0x00080008, "CS", b"A\\\\B "),
    (0x00080008, "CS", b" \\ "),
    (0x00080060, "CS", b"  "),
    (0x00081080, "LO", b" A \\ \\B\x00"),
    (0x00081160, "IS", b"1A"),
    (0x00081160, "IS", b"1\\\\2"),
    (0x00081160, "IS", b"1.5\\ 12 \\1e3"),
    (0x00081160, "IS", b"1\x00\\2"),
    (0x00081160, "IS", b"\t"),
    (0x00081160, "IS", b"inf"),
    (0x00081160, "IS", b"999999999999999999999999"),
    (0x00081160, "IS", b"1_000"),
    (0x00082130, "DS", b"1\\2.5 "),
    (0x00082130, "DS", b"1\\\\2"),
    (0x00082130, "DS", b" nan"),
    (0x00082130, "DS", b"1e400\\-0"),
    (0x00082130, "DS", b"abc"),
    (0x0008009C, "PN", b"A^B=C^D=E\\F"),
    (0x0008009C, "PN", b"A\\"),
    (0x0008009C, "PN", b"=B"),
    (0x0008009C, "PN", b"=="),
    (0x0008009C, "PN", b"a=b=c=d "),
    (0x00280010, "US", b"\x01\x00\x02"),
    (0x00280009, "AT", b"\x10\x00\x20\x00\x28\x00\x10\x00"),
    (0x00280009, "AT", b"\x10\x00\x20\x00\x10\x00"),
    (0x00280009, "AT", b"\x10\x00"),
    (0x0008001A, "UI", b" 1.2 \\ 3.4\x00"),
    (0x00080054, "AE", b" A \\ B "),
    (0x0008010E, "UR", b"http://x/a\\b  "),
    (0x00080108, "LT", b" a\\b \x00 "),
    (0x00080005, "CS", b"ISO_IR 100"),
    (0x00091001, "UN", b"abc"),
    (0x00180015, "UN", b"HEAD"),
    (0x00281101, "SS", b"\x00\x80\x00\x00\x10\x00"),
    (0x00280106, "US", b"\x00\x80"),
]


@pytest.mark.parametrize("encoding", [(True, True), (False, True), (False, False)])
@pytest.mark.parametrize(("tag", "vr", "value"), _CASES)
def test_raw_value(tag: int, vr: str, value: bytes, encoding: tuple[bool, bool]) -> None:
    implicit, little = encoding
    if not little and vr in {"US", "SS", "AT"}:
        value = bytes(b for pair in zip(value[1::2], value[::2], strict=False) for b in pair)
    data = _write(_raw_dataset([(tag, vr, value)], implicit, little), implicit, little)
    assert_same_as_reference(lambda: _read(data))


def test_empty_values_inside_multi_values_are_empty_strings() -> None:
    data = _write(_raw_dataset([(0x00080008, "CS", b"A\\\\B ")], False, True), False, True)
    assert dataset_to_json(_read(data))["00080008"] == {"vr": "CS", "Value": ["A", "", "B"]}


def test_invalid_integer_string_raises_value_error_naming_the_tag() -> None:
    data = _write(_raw_dataset([(0x00200013, "IS", b"1A")], False, True), False, True)
    with pytest.raises(ValueError, match=re.escape("(0020,0013)")):
        dataset_to_json(_read(data))


def test_non_default_pydicom_settings_use_pydicom() -> None:
    path = get_testdata_file("CT_small.dcm")
    assert isinstance(path, str)
    hooks.register_callback("raw_element_value", raw_element_value_fix_separator)
    try:
        assert_same_as_reference(lambda: dcmread(path, defer_size=THRESHOLD))
    finally:
        hooks.register_callback("raw_element_value", raw_element_value)
    previous = config.datetime_conversion
    config.datetime_conversion = True
    try:
        assert_same_as_reference(lambda: dcmread(path, defer_size=THRESHOLD))
    finally:
        config.datetime_conversion = previous


# --------------------------------------------------------------------------------------
# Random data sets

TAGS: dict[str, tuple[int, ...]] = {
    "AE": (0x00080054, 0x00400001),
    "AS": (0x00101010, 0x0072005F),
    "AT": (0x00280009, 0x0028000A),
    "CS": (0x00080008, 0x00080060),
    "DA": (0x00080020, 0x0014407E),
    "DS": (0x00082130, 0x00280030),
    "DT": (0x0008002A, 0x0040A13A),
    "FD": (0x00186054, 0x00189079),
    "FL": (0x0018605A, 0x00186060),
    "IS": (0x00081160, 0x00200013),
    "LO": (0x00081080, 0x00100020),
    "LT": (0x00080108, 0x00204000),
    "OB": (0x0008041B, 0x00142210),
    "OD": (0x003A032E, 0x00660022),
    "OF": (0x00181638, 0x00640009),
    "OL": (0x00660040, 0x00660041),
    "OV": (0x00720081,),
    "OW": (0x00281201, 0x00281202),
    "PN": (0x0008009C, 0x00100010),
    "SH": (0x00080094, 0x00080050),
    "SL": (0x0040A162, 0x0072007C),
    "SS": (0x00189442, 0x00289503),
    "ST": (0x00080081, 0x00080092),
    "SV": (0x00720082,),
    "TM": (0x0014407C, 0x00080030),
    "UC": (0x00160008, 0x00080119),
    "UI": (0x0008001A, 0x00080058),
    "UL": (0x00081161, 0x00081162),
    "UN": (0x0072006D,),
    "UR": (0x0008010E, 0x00080120),
    "US": (0x00080304, 0x00280010),
    "UT": (0x0008030E, 0x00100218),
    "UV": (0x00720083, 0x0008040C),
}
SEQUENCE_TAGS = (0x00081140, 0x00081115, 0x00400275)
AMBIGUOUS = {0x00280106: ("US", "SS"), 0x00143050: ("OB", "OW"), 0x00281101: ("US", "SS")}
PRIVATE_CREATORS = ("GEMS_IDEN_01", "ACME 1.0", "")
PRIVATE_TAGS = {0x00091001: "LO", 0x00091002: "SH", 0x00091017: "LT", 0x00091030: "US"}
CHARSETS = (None, "ISO_IR 100", "ISO_IR 192")
ENCODINGS = ((True, True), (False, True), (False, False))
TEXT_VRS = ("AE", "AS", "CS", "DA", "DT", "TM", "SH", "LO", "UC", "UI", "UR", "ST", "LT", "UT")
STRUCT_CODES = {
    "US": "H", "SS": "h", "UL": "L", "SL": "l", "SV": "q", "UV": "Q", "FL": "f", "FD": "d",
}  # fmt: skip

_ASCII = " ABCabcxyz019.-+_^=\\"
_LATIN = _ASCII + "ÄÜéß"
_WIDE = _LATIN + "王小東"

_sizes = st.sampled_from([3071, 3072, 3073, 4096, 4097, 6000])
_binary = st.one_of(
    st.binary(max_size=24), st.binary(max_size=24), st.builds(lambda n: b"\x5a" * n, _sizes)
)


def _text(charset: str | None) -> st.SearchStrategy[str]:
    alphabet = {None: _ASCII, "ISO_IR 100": _LATIN, "ISO_IR 192": _WIDE}[charset]
    return st.text(alphabet=alphabet, max_size=10)


def _value_for(vr: str, charset: str | None) -> st.SearchStrategy[Any]:
    def several(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.one_of(strategy, st.lists(strategy, min_size=2, max_size=3))

    if vr in {"AE", "AS", "CS", "DA", "DT", "TM", "UI", "UR"}:
        return several(_text(None))
    if vr in {"SH", "LO", "UC"}:
        return several(_text(charset))
    if vr in {"ST", "LT", "UT"}:
        return _text(charset)
    if vr == "PN":
        groups = st.lists(_text(charset).map(lambda s: s.replace("=", "")), max_size=3)
        return several(groups.map("=".join))
    if vr == "IS":
        return several(st.integers(-(2**31), 2**31 - 1))
    if vr == "DS":
        return several(st.one_of(st.integers(-(10**9), 10**9), st.floats(width=32)))
    if vr == "AT":
        return several(st.integers(0, 0xFFFFFFFF))
    if vr in {"FL", "FD"}:
        return several(st.floats(width=32 if vr == "FL" else 64))
    if vr in STRUCT_CODES:
        bits = {"US": 16, "SS": 16, "UL": 32, "SL": 32, "SV": 64, "UV": 64}[vr]
        signed = vr in {"SS", "SL", "SV"}
        low, high = (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)
        return several(st.integers(low, high))
    return _binary


@st.composite
def _value_dataset(draw: st.DrawFn, charset: str | None, depth: int = 0) -> Dataset:
    """A data set built from Python values, which pydicom encodes."""
    dataset = Dataset()
    if charset is not None and depth == 0:
        dataset.SpecificCharacterSet = charset
    for vr in draw(st.lists(st.sampled_from(sorted(TAGS)), max_size=8)):
        tag = draw(st.sampled_from(TAGS[vr]))
        dataset.add(DataElement(tag, vr, draw(_value_for(vr, charset)), validation_mode=0))
    if draw(st.booleans()):
        creator = draw(st.sampled_from(PRIVATE_CREATORS))
        dataset.add(DataElement(0x00090010, "LO", creator, validation_mode=0))
        for tag in draw(st.lists(st.sampled_from(sorted(PRIVATE_TAGS)), max_size=3)):
            vr = PRIVATE_TAGS[tag]
            dataset.add(DataElement(tag, vr, draw(_value_for(vr, charset)), validation_mode=0))
    if depth < 2 and draw(st.booleans()):
        items = draw(st.lists(_value_dataset(charset, depth + 1), max_size=2))
        element = DataElement(draw(st.sampled_from(SEQUENCE_TAGS)), "SQ", items)
        element.is_undefined_length = draw(st.booleans())
        dataset.add(element)
    return dataset


_SETTINGS = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@_SETTINGS
@given(data=st.data())
def test_random_values_match_pydicom(data: st.DataObject) -> None:
    charset = data.draw(st.sampled_from(CHARSETS))
    implicit, little = data.draw(st.sampled_from(ENCODINGS))
    dataset = data.draw(_value_dataset(charset))
    try:
        encoded = _write(dataset, implicit, little)
        _read(encoded)
    except Exception:
        reject()
    assert_same_as_reference(lambda: _read(encoded))


_TOKENS = [
    b" ", b"  ", b"\\", b"\x00", b"\t", b"0", b"1", b"7", b"-", b"+", b".", b"e", b"A",
    b"z", b"^", b"=", b"_", b"\xc4", b"\xe9", b"\xe7\x8e\x8b", b"\x1b$B", b"nan", b"inf",
]  # fmt: skip
_raw_text = st.lists(st.sampled_from(_TOKENS), max_size=10).map(b"".join)


def _raw_value_for(vr: str) -> st.SearchStrategy[bytes]:
    if vr in TEXT_VRS or vr in {"PN", "IS", "DS"}:
        return _raw_text
    if vr in STRUCT_CODES or vr == "AT":
        return st.binary(max_size=18)
    return _binary


@st.composite
def _raw_elements(draw: st.DrawFn, implicit: bool, little: bool, depth: int = 0) -> Dataset:
    """A data set of raw values, which pydicom writes as they are."""
    dataset = Dataset()
    if depth == 0:
        charset = draw(
            st.sampled_from([None, b"ISO_IR 100", b"ISO_IR 192", b"\\ISO 2022 IR 87", b"X"])
        )
        if charset is not None:
            dataset._dict[Tag(0x00080005)] = _raw(0x00080005, "CS", charset, implicit, little)
    for vr in draw(st.lists(st.sampled_from(sorted(TAGS)), max_size=8)):
        tag = draw(st.sampled_from(TAGS[vr]))
        value = draw(_raw_value_for(vr))
        dataset._dict[Tag(tag)] = _raw(tag, vr, value, implicit, little)
    for tag in draw(st.lists(st.sampled_from(sorted(AMBIGUOUS)), max_size=2)):
        vr = draw(st.sampled_from(AMBIGUOUS[tag]))
        dataset._dict[Tag(tag)] = _raw(tag, vr, draw(st.binary(max_size=6)), implicit, little)
    if draw(st.booleans()):
        representation = draw(st.sampled_from([b"\x00\x00", b"\x01\x00", b"\x00\x01"]))
        dataset._dict[Tag(0x00280103)] = _raw(0x00280103, "US", representation, implicit, little)
    if draw(st.booleans()):
        creator = draw(st.sampled_from(PRIVATE_CREATORS)).encode()
        creator += b" " * (len(creator) % 2)
        dataset._dict[Tag(0x00090010)] = _raw(0x00090010, "LO", creator, implicit, little)
        for tag in draw(st.lists(st.sampled_from(sorted(PRIVATE_TAGS)), max_size=3)):
            vr = draw(st.sampled_from([PRIVATE_TAGS[tag], "UN", "OB"]))
            value = draw(_raw_value_for(vr))
            dataset._dict[Tag(tag)] = _raw(tag, vr, value, implicit, little)
    if depth < 2 and draw(st.booleans()):
        items = draw(st.lists(_raw_elements(implicit, little, depth + 1), max_size=2))
        element = DataElement(draw(st.sampled_from(SEQUENCE_TAGS)), "SQ", items)
        element.is_undefined_length = draw(st.booleans())
        dataset.add(element)
    dataset.set_original_encoding(implicit, little, dataset._character_set)
    return dataset


@_SETTINGS
@given(data=st.data())
def test_random_raw_bytes_match_pydicom(data: st.DataObject) -> None:
    implicit, little = data.draw(st.sampled_from(ENCODINGS))
    dataset = data.draw(_raw_elements(implicit, little))
    try:
        encoded = _write(dataset, implicit, little)
        _read(encoded)
    except Exception:
        reject()
    assert_same_as_reference(lambda: _read(encoded))

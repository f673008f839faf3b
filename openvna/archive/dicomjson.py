"""DICOM JSON (PS3.18 F.2) of an instance header, bulk data left out.

Built once at ingest and kept in the index so that QIDO-RS, WADO-RS ``/metadata`` and
AI selection answer from the database. Values longer than ``BULK_THRESHOLD`` (Pixel
Data, overlays, embedded documents) are never read: they appear as ``BulkDataURI``
relative to the instance (``bulkdata/<tag>``), which the web adapter resolves.

The output is, element for element, what pydicom's ``DataElement.to_json_dict`` gives
(with :func:`bulk_data_uri` as bulk data handler and ``BULK_THRESHOLD`` as threshold),
plus the top-level rules: group 0002 left out; Pixel Data, deferred values and binary
values longer than ``BULK_THRESHOLD`` as ``BulkDataURI``. Going through pydicom for every
element (hooks, ``DataElement`` creation, validation, ``to_json_dict``) costs several
milliseconds per header, so the common cases are converted here straight from the raw
bytes (or from the already decoded value), with tight code per VR. Whatever the fast
path is not sure about (ambiguous VRs, unknown tags, malformed values, escape sequences
in Person Names, non-default pydicom configuration, ...) goes through pydicom for that
element, so the output stays identical; where pydicom fails, :class:`ValueError` naming
the tag is raised.
"""

from __future__ import annotations

import binascii
import codecs
import json
from collections.abc import Callable, Iterable
from operator import itemgetter
from struct import Struct, unpack
from typing import Any

import pydicom.valuerep as _valuerep
from pydicom import config
from pydicom._dicom_dict import DicomDictionary
from pydicom.charset import decode_bytes, default_encoding
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.hooks import hooks
from pydicom.hooks import raw_element_value as _default_value_hook
from pydicom.hooks import raw_element_vr as _default_vr_hook
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.valuerep import TEXT_VR_DELIMS, DSfloat, PersonName
from pydicom.values import convert_PN

from openvna.archive.header import BULK_THRESHOLD

_BINARY_VRS = {"OB", "OD", "OF", "OL", "OV", "OW", "UN"}

_PIXEL_DATA = 0x7FE00010
_CHARSET_TAG = 0x00080005
_UNDEFINED_LENGTH = 0xFFFFFFFF
_INLINE_LIMIT = (BULK_THRESHOLD // 4) * 3
"""pydicom's rule: binary values longer than this become BulkDataURI (base64 is 4/3)."""
_AMBIGUOUS_VRS = {"US or SS or OW", "US or SS", "US or OW", "OB or OW"}
_LUT_DESCRIPTOR_TAGS = {0x00281101, 0x00281102, 0x00281103, 0x00283002}
"""pydicom fixes the first value of these after conversion: left to pydicom."""
_JSON_BINARY_VRS = _BINARY_VRS | {"US or SS or OW", "US or OW", "OB or OW"}
"""VRs that ``to_json_dict`` emits as InlineBinary / BulkDataURI."""
_ESC = 0x1B
_EXACT_FLOAT = 2**53
"""Integers below this survive pydicom's int/float round trip of IS values unchanged."""

# pydicom's default character set must be Latin-1 for the byte-level shortcuts below.
_LATIN1_DEFAULT = codecs.lookup(default_encoding).name == "iso8859-1"


def bulk_data_uri(element: DataElement) -> str:
    return f"bulkdata/{element.tag:08X}"


def _vr_of(raw: Any) -> str:
    vr = getattr(raw, "VR", None)
    if vr:
        return str(vr)
    try:
        vr = dictionary_VR(raw.tag)
    except KeyError:
        return "UN"
    return "OW" if "or" in vr else str(vr)


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


_KEYS: dict[int, str] = {}


def _key(tag: int) -> str:
    key = _KEYS.get(tag)
    if key is None:
        key = f"{tag:08X}"
        if len(_KEYS) < 65536:
            _KEYS[int(tag)] = key
    return key


def _fast_path_enabled() -> bool:
    """Whether pydicom is configured as the fast path assumes (its defaults)."""
    return (
        _LATIN1_DEFAULT
        and config.data_element_callback is None
        and hooks.raw_element_vr is _default_vr_hook
        and hooks.raw_element_value is _default_value_hook
        and not hooks.raw_element_kwargs
        and not config.datetime_conversion
        and not config.use_DS_decimal
        and not config.use_DS_numpy
        and not config.use_IS_numpy
        and not config.use_none_as_empty_text_VR_value
        and config.replace_un_with_known_vr
        and config.settings.reading_validation_mode != config.RAISE
        and _valuerep.DSclass is DSfloat
    )


# --------------------------------------------------------------------------------------
# pydicom's own conversion, one element at a time (fallback and non-default settings)


def _pydicom_element(dataset: Dataset, tag: int, top: bool) -> dict[str, Any]:
    """Convert one element of ``dataset`` exactly as pydicom does, errors as ValueError."""
    try:
        element = dataset[tag]
        if top:
            value = element.value
            if element.VR in _BINARY_VRS and value is not None and len(value) > BULK_THRESHOLD:
                return {"vr": element.VR, "BulkDataURI": f"bulkdata/{_key(tag)}"}
        result: dict[str, Any] = element.to_json_dict(
            bulk_data_element_handler=bulk_data_uri, bulk_data_threshold=BULK_THRESHOLD
        )
    except Exception as error:
        raise ValueError(f"element {_tag_text(tag)} cannot be converted: {error}") from error
    return result


def _is_deferred(raw: DataElement | RawDataElement) -> bool:
    """A value left unread at header reading that goes out as bulk data.

    pydicom defers every long value, sequences included; a sequence is never bulk data
    (PS3.18 F.2.2: only binary and long text values may be), so it is read here.
    """
    return (
        isinstance(raw, RawDataElement)
        and raw.value is None
        and raw.length > BULK_THRESHOLD
        and _vr_of(raw) != "SQ"
    )


def _dataset_to_json_pydicom(dataset: Dataset) -> dict[str, Any]:
    """All elements through pydicom; used when pydicom's settings are not the defaults."""
    result: dict[str, Any] = {}
    elements = dataset._dict
    for tag in sorted(elements):
        if tag >> 16 == 0x0002:
            continue
        raw = elements[tag]
        key = _key(tag)
        if tag == _PIXEL_DATA or _is_deferred(raw):
            result[key] = {"vr": _vr_of(raw), "BulkDataURI": f"bulkdata/{key}"}
            continue
        result[key] = _pydicom_element(dataset, tag, True)
    return result


# --------------------------------------------------------------------------------------
# Fast path: raw bytes -> JSON values, per VR. A converter returns the "Value" list,
# an empty list for "no Value" (what pydicom does for an empty value), or None when
# unsure (pydicom converts that element).

_NO_VALUE: list[Any] = []
_Converter = Callable[[bytes, bool, "_Context"], "list[Any] | None"]


class _Context:
    """Per-dataset state: its character sets and private creators, looked up lazily."""

    __slots__ = ("_creators", "_encodings", "dataset")

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._encodings: list[str] | None = None
        self._creators: dict[int, object] = {}

    def encodings(self) -> list[str]:
        if self._encodings is None:
            dataset = self.dataset
            charset = dataset.original_character_set or dataset._character_set
            if not charset:
                self._encodings = [default_encoding]
            elif isinstance(charset, str):
                self._encodings = [charset]
            else:
                self._encodings = list(charset)
        return self._encodings

    def private_vr(self, tag: int) -> str | None:
        """pydicom's VR for a private tag without explicit VR (PS3.5 6.2.2)."""
        element = tag & 0xFFFF
        if 0x0010 <= element < 0x0100:
            return "LO"
        if element & 0xFF00:
            creator_tag = (tag & 0xFFFF0000) | (element >> 8)
            creator = self._creators.get(creator_tag, self)
            if creator is self:
                try:
                    creator_element = self.dataset.get(creator_tag, None)
                    creator = "" if creator_element is None else creator_element.value
                except Exception:
                    return None
                self._creators[creator_tag] = creator
            if not isinstance(creator, str):
                return None
            if creator:
                try:
                    return str(private_dictionary_VR(tag, creator))
                except KeyError:
                    pass
        return "UN"


def _decode_text(value: bytes, context: _Context) -> str | None:
    """Decode a text value as pydicom's ``decode_bytes`` does (None: unsure)."""
    if value.isascii() and _ESC not in value:
        return value.decode("ascii")  # every DICOM character set extends ASCII
    encodings = context.encodings()
    if _ESC not in value:
        try:
            return value.decode(encodings[0])
        except (LookupError, UnicodeError):
            return None  # pydicom warns and replaces: leave it to pydicom
    try:
        return decode_bytes(value, encodings, TEXT_VR_DELIMS)
    except Exception:
        return None


def _v_string(value: bytes, little: bool, context: _Context) -> list[Any] | None:
    # AS CS DA DT TM (datetime_conversion off): rstrip " \0", split
    text = value.decode("latin-1").rstrip(" \x00")
    if "\\" in text:
        return text.split("\\")
    return [text] if text else _NO_VALUE


def _v_ae(value: bytes, little: bool, context: _Context) -> list[Any] | None:
    items = [item.strip() for item in value.decode("latin-1").split("\\")]
    if len(items) == 1 and not items[0]:
        return _NO_VALUE
    return items


def _v_ui(value: bytes, little: bool, context: _Context) -> list[Any] | None:
    items = [item.strip() for item in value.decode("latin-1").rstrip("\x00 ").split("\\")]
    if len(items) == 1 and not items[0]:
        return _NO_VALUE
    return items


def _v_ur(value: bytes, little: bool, context: _Context) -> list[Any] | None:
    text = value.decode("latin-1").rstrip()
    return [text] if text else _NO_VALUE


def _v_ds(value: bytes, little: bool, context: _Context) -> list[Any] | None:
    items = value.decode("latin-1").strip().rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0]:
        return _NO_VALUE
    result = []
    for item in items:
        if not item.strip():
            return None  # pydicom keeps it as text and fails on it
        result.append(float(item))
    return result


def _v_is(value: bytes, little: bool, context: _Context) -> list[Any] | None:
    items = value.decode("latin-1").rstrip(" \x00").split("\\")
    if len(items) == 1 and not items[0]:
        return _NO_VALUE
    result = []
    for item in items:
        if not item.strip():
            return None
        number = int(item)  # not an integer string: pydicom decides (float, retry, error)
        if not -_EXACT_FLOAT < number < _EXACT_FLOAT:
            return None
        result.append(number)
    return result


def _v_text(value: bytes, little: bool, context: _Context) -> list[Any] | None:
    # SH LO UC: character set, split, rstrip "\0 " per value
    text = _decode_text(value, context)
    if text is None:
        return None
    if "\\" in text:
        return [item.rstrip("\x00 ") for item in text.split("\\")]
    text = text.rstrip("\x00 ")
    return [text] if text else _NO_VALUE


def _v_long_text(value: bytes, little: bool, context: _Context) -> list[Any] | None:
    # ST LT UT: character set, no split, rstrip "\0 "
    text = _decode_text(value, context)
    if text is None:
        return None
    text = text.rstrip("\x00 ")
    return [text] if text else _NO_VALUE


def _person_names(names: list[Any]) -> list[Any] | None:
    """JSON of decoded PersonName objects, as ``to_json_dict``; None where it fails."""
    result = []
    for name in names:
        if not isinstance(name, PersonName):
            return None
        components = name.components
        if not components:
            return None  # pydicom raises IndexError
        groups = {"Alphabetic": components[0]}
        if len(components) > 1:
            groups["Ideographic"] = components[1]
            if len(components) > 2:
                groups["Phonetic"] = components[2]
        result.append(groups)
    return result


def _v_pn(value: bytes, little: bool, context: _Context) -> list[Any] | None:
    stripped = value.rstrip(b"\x00 ")
    if not stripped.isascii() or _ESC in stripped:
        converted = convert_PN(value, context.encodings())
        if isinstance(converted, PersonName):
            return _person_names([converted]) if converted else _NO_VALUE
        return _person_names(list(converted))
    names = stripped.decode("ascii").split("\\")
    result = []
    for name in names:
        components = name.split("=")
        while components and not components[-1]:
            components.pop()
        if not components:
            if len(names) == 1:
                return _NO_VALUE
            return None  # pydicom raises IndexError
        groups = {"Alphabetic": components[0]}
        if len(components) > 1:
            groups["Ideographic"] = components[1]
            if len(components) > 2:
                groups["Phonetic"] = components[2]
        result.append(groups)
    return result


def _number_converter(code: str, size: int) -> _Converter:
    structs: tuple[dict[int, Callable[[bytes], tuple[Any, ...]]], ...] = ({}, {})

    def convert(value: bytes, little: bool, context: _Context) -> list[Any] | None:
        count, remainder = divmod(len(value), size)
        if remainder:
            return None  # pydicom raises BytesLengthException (or converts to UN)
        cache = structs[little]
        unpack = cache.get(count)
        if unpack is None:
            unpack = Struct(f"{'<' if little else '>'}{count}{code}").unpack
            if count <= 64:
                cache[count] = unpack
        return list(unpack(value))

    return convert


def _v_at(value: bytes, little: bool, context: _Context) -> list[Any] | None:
    count, remainder = divmod(len(value), 2)
    if remainder or count & 1:
        return None
    numbers = unpack(f"{'<' if little else '>'}{count}H", value)
    return [f"{numbers[i]:04X}{numbers[i + 1]:04X}" for i in range(0, count, 2)]


_CONVERTERS: dict[str, _Converter] = {
    "AE": _v_ae,
    "AS": _v_string,
    "AT": _v_at,
    "CS": _v_string,
    "DA": _v_string,
    "DS": _v_ds,
    "DT": _v_string,
    "FD": _number_converter("d", 8),
    "FL": _number_converter("f", 4),
    "IS": _v_is,
    "LO": _v_text,
    "LT": _v_long_text,
    "PN": _v_pn,
    "SH": _v_text,
    "SL": _number_converter("l", 4),
    "SS": _number_converter("h", 2),
    "ST": _v_long_text,
    "SV": _number_converter("q", 8),
    "TM": _v_string,
    "UC": _v_text,
    "UI": _v_ui,
    "UL": _number_converter("L", 4),
    "UR": _v_ur,
    "US": _number_converter("H", 2),
    "UT": _v_long_text,
    "UV": _number_converter("Q", 8),
}


def _raw_vr(tag: int, raw: RawDataElement, context: _Context) -> str | None:
    """pydicom's VR for a raw element with VR None (implicit) or UN; None if unsure."""
    entry = DicomDictionary.get(tag)
    if raw.VR is None:
        if entry is not None:
            return str(entry[0])
        if tag >> 16 & 1:
            return context.private_vr(tag)
        try:
            return str(dictionary_VR(tag))  # repeating groups (60xx, 50xx, ...)
        except KeyError:
            return None  # group lengths, unknown public tags: pydicom decides
    # explicit "UN": pydicom replaces it by the known VR
    if tag >> 16 & 1:
        return context.private_vr(tag)
    if raw.value is not None and len(raw.value) >= 0xFFFF:
        return "UN"
    if entry is not None:
        return str(entry[0])
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return "UN"


def _binary_json(vr: str, tag: int, value: bytes) -> dict[str, Any]:
    if not value:
        return {"vr": vr}
    if len(value) > _INLINE_LIMIT:
        return {"vr": vr, "BulkDataURI": f"bulkdata/{_key(tag)}"}
    return {"vr": vr, "InlineBinary": binascii.b2a_base64(value, newline=False).decode("ascii")}


def _raw_json(
    dataset: Dataset, tag: int, raw: RawDataElement, context: _Context
) -> dict[str, Any] | None:
    """JSON of a raw element; None when pydicom must convert it."""
    vr = raw.VR
    if vr is None or vr == "UN":
        vr = _raw_vr(tag, raw, context)
        if vr is None:
            return None
    if vr == "SQ":
        return _converted_json(dataset, tag)
    if vr in _AMBIGUOUS_VRS:
        return None  # pydicom corrects the VR from the data set (PS3.5 Annex A)
    length = raw.length
    value = raw.value
    if vr in _BINARY_VRS:
        if length == 0:
            return {"vr": vr}
        if value is None or length == _UNDEFINED_LENGTH:
            return None
        return _binary_json(vr, tag, value)
    converter = _CONVERTERS.get(vr)
    if converter is None or tag in _LUT_DESCRIPTOR_TAGS or (tag == _CHARSET_TAG and vr != "CS"):
        return None
    if length == 0:
        return {"vr": vr}  # implicit VR empty values are None, not b""
    if value is None or length == _UNDEFINED_LENGTH:
        return None
    try:
        values = converter(value, raw.is_little_endian, context)
    except Exception:
        return None
    if values is None:
        return None
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _converted_json(dataset: Dataset, tag: int) -> dict[str, Any] | None:
    """Let pydicom convert the element (it parses sequences), then convert its value."""
    try:
        element = dataset[tag]
    except Exception as error:
        raise ValueError(f"element {_tag_text(tag)} cannot be converted: {error}") from error
    return _element_to_json(element, tag)


# --------------------------------------------------------------------------------------
# Fast path for elements pydicom has already converted: ``to_json_dict`` without its
# per-call overhead. Only the value types pydicom produces are handled here.

_TEXT, _INT, _FLOAT, _PN, _AT = range(5)
_KINDS = {
    **dict.fromkeys(
        ("AE", "AS", "CS", "DA", "DT", "LO", "LT", "SH", "ST", "TM", "UC", "UI", "UR", "UT"),
        _TEXT,
    ),
    **dict.fromkeys(("IS", "SL", "SS", "SV", "UL", "US", "UV"), _INT),
    **dict.fromkeys(("DS", "FD", "FL"), _FLOAT),
    "PN": _PN,
    "AT": _AT,
}


def _element_values(kind: int, value: Any) -> list[Any] | None:
    if value is None:
        return _NO_VALUE
    if isinstance(value, str | PersonName):
        if not value:
            return _NO_VALUE
        values: list[Any] = [value]
    elif isinstance(value, MultiValue | list):
        if len(value) == 1:
            return None  # VM 1 with a list: pydicom nests it; leave it to pydicom
        values = list(value)
    elif isinstance(value, int | float) and kind != _TEXT and kind != _PN:
        values = [value]
    else:
        return None
    if kind == _TEXT:
        return values
    if kind == _INT:
        return [int(v) if v is not None else None for v in values]
    if kind == _FLOAT:
        return [float(v) if v is not None else None for v in values]
    if kind == _PN:
        return _person_names(values)
    if all(isinstance(v, int) for v in values):  # AT
        return [f"{v:08X}" for v in values]
    return None


def _element_to_json(element: DataElement, tag: int) -> dict[str, Any] | None:
    vr = element.VR
    value = element.value
    if vr == "SQ":
        if not isinstance(value, Sequence | list):
            return None
        return {"vr": vr, "Value": _sequence_json(tag, value)}
    if vr in _JSON_BINARY_VRS:
        if value is None:
            return {"vr": vr}
        if type(value) is bytes:
            return _binary_json(vr, tag, value)
        return None
    kind = _KINDS.get(vr)
    if kind is None:
        return None
    try:
        values = _element_values(kind, value)
    except Exception:
        return None
    if values is None:
        return None
    return {"vr": vr, "Value": values} if values else {"vr": vr}


def _sequence_json(tag: int, items: Any) -> list[Any]:
    result = []
    for index, item in enumerate(items):
        if not isinstance(item, Dataset):
            raise ValueError(f"element {_tag_text(tag)} item {index} is not a data set")
        try:
            result.append(_items_json(item, False))
        except ValueError as error:
            raise ValueError(f"in {_tag_text(tag)} item {index}: {error}") from error
    return result


def _items_json(dataset: Dataset, top: bool) -> dict[str, Any]:
    """JSON of a data set: the top level (sorted, bulk rules) or a sequence item."""
    result: dict[str, Any] = {}
    elements = dataset._dict
    # plain ints: BaseTag compares and hashes through Python-level methods
    pairs: Iterable[tuple[int, DataElement | RawDataElement]] = zip(
        map(int, elements), elements.values(), strict=True
    )
    if top:
        pairs = sorted(pairs, key=itemgetter(0))
    context = _Context(dataset)
    keys = _KEYS
    for tag, elem in pairs:
        if top and tag >> 16 == 0x0002:
            continue
        key = keys.get(tag) or _key(tag)
        out: dict[str, Any] | None
        if isinstance(elem, RawDataElement):
            if top and (tag == _PIXEL_DATA or _is_deferred(elem)):
                result[key] = {"vr": _vr_of(elem), "BulkDataURI": f"bulkdata/{key}"}
                continue
            out = _raw_json(dataset, tag, elem, context)
        else:
            if top and tag == _PIXEL_DATA:
                result[key] = {"vr": _vr_of(elem), "BulkDataURI": f"bulkdata/{key}"}
                continue
            out = _element_to_json(elem, tag)
        if out is None:
            out = _pydicom_element(dataset, tag, top)
        result[key] = out
    return result


def dataset_to_json(dataset: Dataset) -> dict[str, Any]:
    """Convert a header (large values possibly deferred) to a DICOM JSON object.

    Raises
    ------
    ValueError
        An element's value cannot be converted (the message names its tag).
    """
    if not _fast_path_enabled():
        return _dataset_to_json_pydicom(dataset)
    return _items_json(dataset, True)


def dataset_to_json_text(dataset: Dataset) -> str:
    return json.dumps(dataset_to_json(dataset), separators=(",", ":"), ensure_ascii=False)


__all__ = ["bulk_data_uri", "dataset_to_json", "dataset_to_json_text"]

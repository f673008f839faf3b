"""pydicom Datasets from the DICOM JSON headers the index keeps (PS3.18 F.2), fast.

Volume assembly hands result writers (highdicom SEG, SR) one pydicom Dataset per source
instance, built from the header stored at ingest rather than by parsing the file again.
``Dataset.from_json`` costs about 2 ms for a 70-element CT header, more than reading and
decoding the slice's pixels, so the common value representations are converted here
straight into the value types pydicom itself produces when it reads a file (``str``,
``UID``, ``DSfloat``, ``IS``, ``PersonName``, ``MultiValue``, ``Sequence``) and stored
with ``already_converted``; anything unusual (a non-default pydicom configuration, an
unknown VR, a malformed value) goes through pydicom for that element.

Bulk data (``BulkDataURI``: Pixel Data, large private blobs) is left out: the source
datasets describe the images, they do not carry them.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from typing import Any

from pydicom import config
from pydicom.dataelem import DataElement, RawDataElement, empty_value_for_VR
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.sequence import Sequence
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.valuerep import IS, DSfloat, PersonName

_TEXT_VRS = frozenset({"AE", "AS", "CS", "LO", "LT", "SH", "ST", "UC", "UR", "UT"})
_TIME_VRS = frozenset({"DA", "DT", "TM"})
_NUMBER_VRS = frozenset({"US", "SS", "UL", "SL", "UV", "SV", "FL", "FD"})
_BINARY_VRS = frozenset({"OB", "OD", "OF", "OL", "OV", "OW", "UN"})
_IGNORE = config.IGNORE


def _ds(value: Any) -> DSfloat:
    return DSfloat(value, validation_mode=_IGNORE)


def _is(value: Any) -> Any:
    return IS(value, validation_mode=_IGNORE)


def _pn(value: Any) -> PersonName:
    if isinstance(value, PersonName):
        return value
    if isinstance(value, dict):
        groups = [value.get(key, "") for key in ("Alphabetic", "Ideographic", "Phonetic")]
        value = "=".join(groups).rstrip("=")
    return PersonName(value, validation_mode=_IGNORE)


def _at(value: Any) -> BaseTag:
    return value if isinstance(value, BaseTag) else BaseTag(int(value, 16))


_CONVERTERS: dict[str, Callable[[Any], Any]] = {
    "UI": UID,
    "DS": _ds,
    "IS": _is,
    "PN": _pn,
    "AT": _at,
}


def _converter(vr: str) -> Callable[[Any], Any] | None:
    """How one JSON value of ``vr`` becomes pydicom's value; None: leave it to pydicom."""
    if vr in _TEXT_VRS or (vr in _TIME_VRS and not config.datetime_conversion):
        return str
    if vr in _NUMBER_VRS:
        return _identity
    return _CONVERTERS.get(vr)


def _identity(value: Any) -> Any:
    return value


def _element(tag: BaseTag, vr: str, entry: Mapping[str, Any]) -> DataElement | None:
    """The element of one JSON entry; None for bulk data."""
    if "BulkDataURI" in entry:
        return None
    if vr == "SQ":
        items = entry.get("Value") or []
        sequence = Sequence([dataset_from_json(item or {}) for item in items])
        return DataElement(tag, vr, sequence, already_converted=True)
    if "InlineBinary" in entry:
        inline = entry["InlineBinary"]
        raw = base64.b64decode(inline[0] if isinstance(inline, list) else inline)
        return DataElement(tag, vr, raw, already_converted=True, validation_mode=_IGNORE)
    values = entry.get("Value")
    if vr in _BINARY_VRS and values:
        return None  # not valid DICOM JSON for a binary VR: nothing trustworthy to keep
    if not values:
        return DataElement(tag, vr, empty_value_for_VR(vr), already_converted=True)
    convert = _converter(vr)
    if convert is None or config.use_none_as_empty_text_VR_value or None in values:
        return DataElement.from_json(Dataset, f"{tag:08X}", vr, values, "Value")
    if len(values) == 1:
        return DataElement(tag, vr, convert(values[0]), already_converted=True)
    return DataElement(tag, vr, MultiValue(convert, values), already_converted=True)


def dataset_from_json(header: Mapping[str, Any]) -> Dataset:
    """The Dataset a DICOM JSON object describes, bulk data left out.

    Equal, element for element, to ``Dataset.from_json`` for the values it converts
    itself.

    Raises
    ------
    ValueError
        A key is not an eight-digit hexadecimal tag or an entry has no VR.
    """
    elements: dict[BaseTag, DataElement | RawDataElement] = {}
    for key, entry in header.items():
        try:
            tag = BaseTag(int(key, 16))
            vr = str(entry["vr"])
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"malformed DICOM JSON element {key!r}: {error}") from error
        element = _element(tag, vr, entry)
        if element is not None:
            elements[tag] = element
    # The mapping constructor is how pydicom's file reader builds a Dataset: no
    # per-element __setitem__ (a third of the cost otherwise).
    return Dataset(elements)

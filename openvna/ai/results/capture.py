"""Derived images of kind ``secondary-capture`` as Secondary Capture images (PS3.3 A.8.1).

A secondary capture suits what a model draws for people (a heat-map overlay, an
annotated key image): 8-bit grey (MONOCHROME2) or RGB pixels, the patient and study of
the source, and a Source Image Sequence naming the slice it shows (General Reference
module, C.12.4), so a viewer can jump from the capture to the original image.
"""

from __future__ import annotations

from datetime import datetime

import highdicom as hd
import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian

from openvna.ai.inputs import SourceFrame, Volume
from openvna.ai.outputs import DerivedImage
from openvna.ai.results.errors import ResultEncodingError
from openvna.ai.results.identity import AlgorithmIdentity, stamp_creation


def build_secondary_capture(
    image: DerivedImage,
    volume: Volume,
    algorithm: AlgorithmIdentity,
    *,
    series_number: int,
    instance_number: int,
    created: datetime,
) -> hd.sc.SCImage:
    """The SC image of one derived image; all of a job's captures share one series.

    Raises
    ------
    ResultEncodingError
        When the pixels are not uint8 grey (rows, columns) or RGB (rows, columns, 3), or
        ``source_slice`` is outside the volume.
    """
    photometric = _photometric_interpretation(image)
    source, header = _source(image, volume)
    try:
        capture = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=header,
            pixel_array=np.ascontiguousarray(image.pixels),
            photometric_interpretation=photometric,
            bits_allocated=8,
            coordinate_system=hd.CoordinateSystemNames.PATIENT,
            series_instance_uid=algorithm.uid("sc", "series"),
            series_number=series_number,
            sop_instance_uid=algorithm.uid("sc", "instance", instance_number),
            instance_number=instance_number,
            manufacturer=algorithm.manufacturer,
            patient_orientation=patient_orientation(volume, header),
            transfer_syntax_uid=ExplicitVRLittleEndian,
            series_description=algorithm.series_description,
            manufacturer_model_name=algorithm.name,
            software_versions=algorithm.version,
            series_date=created.date(),
            series_time=created.time(),
            content_date=created.date(),
            content_time=created.time(),
        )
    except (ValueError, TypeError, AttributeError) as error:
        raise ResultEncodingError(
            f"highdicom refused the secondary capture {image.label!r}: {error}"
        ) from error
    capture.ImageType = ["DERIVED", "SECONDARY"]
    capture.DerivationDescription = f"{algorithm.series_description}: {image.label}"[:1024]
    capture.ImageComments = image.label[:10240]
    stamp_creation(capture, created)
    if source is not None:
        capture.SourceImageSequence = DicomSequence([_source_item(source)])
    return capture


def patient_orientation(volume: Volume, header: Dataset) -> tuple[str, str]:
    """Patient Orientation (0020,0020) of the capture: the source's own value when it
    has one (projection images), else the dominant patient axis of the row and column
    directions (PS3.3 C.7.6.1.1.1)."""
    stored = header.get("PatientOrientation")
    if stored is not None and len(stored) == 2 and all(stored):
        return str(stored[0]), str(stored[1])
    return _direction(volume.orientation[:3]), _direction(volume.orientation[3:])


def _direction(cosines: tuple[float, ...]) -> str:
    axis = int(np.argmax(np.abs(cosines)))
    positive, negative = (("L", "R"), ("P", "A"), ("H", "F"))[axis]
    return positive if cosines[axis] >= 0 else negative


def _photometric_interpretation(image: DerivedImage) -> str:
    pixels = image.pixels
    if pixels.dtype != np.uint8:
        raise ResultEncodingError(
            f"secondary capture {image.label!r} has {pixels.dtype} pixels, not uint8"
        )
    if pixels.ndim == 2:
        return "MONOCHROME2"
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return "RGB"
    raise ResultEncodingError(
        f"secondary capture {image.label!r} has shape {pixels.shape}: "
        "expected (rows, columns) or (rows, columns, 3)"
    )


def _source(image: DerivedImage, volume: Volume) -> tuple[SourceFrame | None, Dataset]:
    """The slice the image shows and the header to copy patient and study from."""
    if image.source_slice is None:
        return None, volume.datasets[0]
    if not 0 <= image.source_slice < len(volume.sources):
        raise ResultEncodingError(
            f"derived image {image.label!r} names slice {image.source_slice}, "
            f"the volume has {len(volume.sources)}"
        )
    source = volume.sources[image.source_slice]
    header = next(
        (ds for ds in volume.datasets if str(ds.SOPInstanceUID) == source.sop_instance_uid),
        volume.datasets[0],
    )
    return source, header


def _source_item(source: SourceFrame) -> Dataset:
    item = Dataset()
    item.ReferencedSOPClassUID = source.sop_class_uid
    item.ReferencedSOPInstanceUID = source.sop_instance_uid
    if source.frame_number is not None:
        item.ReferencedFrameNumber = source.frame_number
    return item

"""Build the result objects of a tiny synthetic CT once, before the AI worker forks.

highdicom and pydicom fill large lookup tables (IOD modules, data dictionary, code
values) on first use. Each job attempt runs in a fresh child forked from the AI worker,
so without this every attempt paid that first-use cost again (about half a second of
the report's build time); after it, children inherit the tables already filled.
"""

from __future__ import annotations

import logging

import numpy as np
from pydicom import Dataset
from pydicom.uid import CTImageStorage, generate_uid

from openvna.ai.inputs import SourceFrame, Volume
from openvna.ai.outputs import (
    ANATOMICAL_STRUCTURE,
    LUNG,
    MILLILITRE,
    VOLUME,
    Finding,
    Measurement,
    ModelOutput,
    Segment,
)
from openvna.ai.results.build import build_result_datasets, to_part10_bytes
from openvna.ai.results.identity import AlgorithmIdentity

logger = logging.getLogger(__name__)


def warm_up_result_writers() -> None:
    """Write a SEG, an SR and their Part 10 bytes for a 2-slice synthetic CT."""
    try:
        volume = _synthetic_ct(slices=2, size=8)
        mask = np.zeros(volume.shape, dtype=np.bool_)
        mask[:, 2:6, 2:6] = True
        output = ModelOutput(
            findings=[Finding(LUNG, present=True, probability=0.5, segment_number=1)],
            measurements=[Measurement(VOLUME, 1.0, MILLILITRE, segment_number=1)],
            segments=[Segment("Warm-up", ANATOMICAL_STRUCTURE, LUNG, mask)],
            priority=0.5,
        )
        for result in build_result_datasets(output, volume, AlgorithmIdentity("warm-up", "0")):
            to_part10_bytes(result.dataset)
    except Exception:  # only a speed-up: a failure here must not stop the worker
        logger.debug("result writer warm-up failed", exc_info=True)


def _synthetic_ct(*, slices: int, size: int) -> Volume:
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    headers = []
    for index in range(slices):
        header = Dataset()
        header.PatientID = "WARM-UP"
        header.PatientName = "WARM^UP"
        header.PatientBirthDate = ""
        header.PatientSex = ""
        header.StudyInstanceUID = study
        header.StudyDate = "20260101"
        header.StudyTime = "000000"
        header.StudyID = "1"
        header.AccessionNumber = ""
        header.ReferringPhysicianName = ""
        header.SOPClassUID = CTImageStorage
        header.SOPInstanceUID = generate_uid()
        header.SeriesInstanceUID = series
        header.SeriesNumber = 1
        header.InstanceNumber = index + 1
        header.Modality = "CT"
        header.FrameOfReferenceUID = frame_of_reference
        header.PositionReferenceIndicator = ""
        header.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        header.ImagePositionPatient = [0, 0, float(index)]
        header.PixelSpacing = [1, 1]
        header.SliceThickness = 1
        header.Rows = header.Columns = size
        header.SamplesPerPixel = 1
        header.PhotometricInterpretation = "MONOCHROME2"
        header.BitsAllocated = 16
        header.BitsStored = 12
        header.HighBit = 11
        header.PixelRepresentation = 0
        headers.append(header)
    return Volume(
        voxels=np.zeros((slices, size, size), dtype=np.float32),
        spacing=(1.0, 1.0, 1.0),
        origin=(0.0, 0.0, 0.0),
        orientation=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0),
        study_instance_uid=study,
        series_instance_uid=series,
        modality="CT",
        frame_of_reference_uid=frame_of_reference,
        sources=[SourceFrame(str(h.SOPInstanceUID), str(h.SOPClassUID)) for h in headers],
        datasets=headers,
    )

"""Synthetic DICOM study generator.

Writes realistic but entirely *synthetic* DICOM Part 10 files: patients, names,
dates and pixel data are all produced from seeded pseudo-random generators, so
no real patient data is involved anywhere.  The same seed always produces
byte-identical files.

The generated data is used to load sample studies into a development archive,
by the test-suite and by benchmarks.

Layout on disk (names are ours, never derived from DICOM attribute values)::

    out_dir/<patient_index>/<study_index>/<series_index>/<instance_index>.dcm

where the directory indices are zero-based integers and ``instance_index`` is a
zero-based, zero-padded four digit number (``0000.dcm``, ``0001.dcm``, ...).
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime, time, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filewriter import dcmwrite
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import (
    UID,
    ComputedRadiographyImageStorage,
    CTImageStorage,
    DigitalXRayImageStorageForPresentation,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    UltrasoundMultiFrameImageStorage,
)

__all__ = [
    "IMPLEMENTATION_CLASS_UID",
    "UID_ROOT",
    "GeneratedStudy",
    "generate_ct_series",
    "generate_samples",
]

FloatArray = npt.NDArray[np.float32]

UID_ROOT: Final = "2.25."
"""Root of every UID the generator writes: UUID-derived UIDs (PS3.5 B.2), which need no
registered organisation root; each is a deterministic hash of the seed and position."""

_UID_NAMESPACE: Final = uuid.UUID("5c1f3c1e-6a8e-4f57-9d2b-0e4a6f0c7b21")


def _uuid_uid(name: str) -> str:
    """A ``2.25.`` UID from a name-based (SHA-1, version 5) UUID: same name, same UID."""
    return f"{UID_ROOT}{uuid.uuid5(_UID_NAMESPACE, name).int}"


IMPLEMENTATION_CLASS_UID: Final = _uuid_uid("openvna-sample-implementation")
"""Implementation Class UID written into the file meta information."""

_IMPLEMENTATION_VERSION_NAME: Final = "OPENVNA_SAMPLE1"
_CHARSET: Final = "ISO_IR 100"
_INSTITUTION: Final = "OpenVNA Synthetic Hospital"
_MANUFACTURER: Final = "OpenVNA Synthetic"
_SYNTHETIC_NOTE: Final = "SYNTHETIC TEST DATA - NOT A REAL PATIENT"
_FIRST_YEAR: Final = 2019
_LAST_YEAR: Final = 2026

_FAMILY_NAMES: Final = (
    "DOE",
    "SMITH",
    "JOHNSON",
    "NGUYEN",
    "ROSSI",
    "KOWALSKI",
    "SCHMIDT",
    "OKAFOR",
    "TANAKA",
    "LEROY",
    "ANDERSEN",
    "SILVA",
    "MURPHY",
    "DUBOIS",
)
# Latin-1 (ISO_IR 100) representable family names with accented characters.
_ACCENTED_FAMILY_NAMES: Final = (
    "MÜLLER",
    "GARCÍA",
    "LEFÈVRE",
    "NÚÑEZ",
    "BJÖRK",
    "FRANÇOIS",
)
_FEMALE_GIVEN_NAMES: Final = (
    "JANE",
    "ANNA",
    "MARIA",
    "SOFIA",
    "EMMA",
    "GRACE",
    "LINA",
    "CLARA",
)
_MALE_GIVEN_NAMES: Final = (
    "JOHN",
    "PETER",
    "LUCAS",
    "DAVID",
    "OMAR",
    "HENRY",
    "MARCO",
    "TOMAS",
)
_REFERRING_PHYSICIANS: Final = (
    "WELBY^MARCUS^^DR",
    "QUINN^MICHAELA^^DR",
    "KILDARE^JAMES^^DR",
    "CAREY^ALEX^^DR",
)


# ---------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class GeneratedStudy:
    """One synthetic study written by :func:`generate_samples`.

    Attributes
    ----------
    patient_id : str
        Patient ID (0010,0020) of the study's patient.
    study_instance_uid : str
        Study Instance UID (0020,000D).
    modality : str
        Modality (0008,0060) of the study's series (``CT``, ``MR``, ``CR``,
        ``DX`` or ``US``).
    study_date : str
        Study Date (0008,0020) as ``YYYYMMDD``.
    paths : tuple of Path
        The files written for this study, in series then instance order.
    """

    patient_id: str
    study_instance_uid: str
    modality: str
    study_date: str
    paths: tuple[Path, ...]


def generate_samples(
    out_dir: Path, *, seed: int = 1, patients: int = 4, small: bool = False
) -> list[GeneratedStudy]:
    """Write a set of synthetic studies for several patients.

    Every patient gets a CT chest (one axial series), an MR brain (two
    series), a CR or DX chest (one or two images) and an abdominal US (one
    multi-frame cine instance), spread over distinct years between 2019 and
    2026; every other patient also gets a follow-up CT or MR in a later year.

    Parameters
    ----------
    out_dir : Path
        Directory to write into (created if missing).  Files are written as
        ``out_dir/<patient>/<study>/<series>/<instance>.dcm``.
    seed : int, optional
        Non-negative seed; the same seed gives byte-identical files.
    patients : int, optional
        Number of patients (at least 1).  At least one patient has a family
        name with a Latin-1 accented character.
    small : bool, optional
        If true, use small images (CT 8 slices 128x128, MR 2x6 slices 128x128,
        CR/DX 256x256, US 10 frames 96x128) so that a default set is a few
        megabytes.  Otherwise use realistic sizes (CT 40 slices 512x512, MR
        2x20 slices 256x256, CR/DX 1024x1024 12 bit, US 30 frames 240x320 RGB).

    Returns
    -------
    list of GeneratedStudy
        The studies written, ordered by patient then study date.

    Raises
    ------
    ValueError
        If `seed` is negative or `patients` is less than 1.
    """
    if seed < 0:
        raise ValueError("seed must be non-negative")
    if patients < 1:
        raise ValueError("patients must be at least 1")
    sizes = _SMALL_SIZES if small else _FULL_SIZES
    out_dir = Path(out_dir)
    plan_rng = np.random.default_rng([seed, 0x5A4D])
    patient_list = _make_patients(plan_rng, patients)
    studies: list[GeneratedStudy] = []
    for patient in patient_list:
        for plan in _plan_studies(plan_rng, seed, patient):
            study_dir = out_dir / str(patient.index) / str(plan.index)
            image_rng = np.random.default_rng([seed, patient.index, plan.index, 0x1A6E])
            paths = _WRITERS[plan.kind](study_dir, plan, sizes, image_rng)
            studies.append(
                GeneratedStudy(
                    patient_id=patient.patient_id,
                    study_instance_uid=plan.study_uid,
                    modality=plan.modality,
                    study_date=plan.study_date.strftime("%Y%m%d"),
                    paths=tuple(paths),
                )
            )
    return studies


def generate_ct_series(
    out_dir: Path,
    *,
    instances: int,
    rows: int = 512,
    columns: int = 512,
    seed: int = 1,
    patient_id: str = "BENCH001",
    patient_name: str = "BENCH^CT",
    study_instance_uid: str | None = None,
) -> list[Path]:
    """Write one synthetic axial CT series, e.g. for benchmarks.

    With the default 512x512 matrix each slice is about 0.5 MB (int16 pixels,
    Explicit VR Little Endian), so 960 slices is roughly 500 MB.  Pixel data is
    generated in chunks, so memory use does not grow with `instances`.

    Parameters
    ----------
    out_dir : Path
        Directory to write into (created if missing); files are named
        ``0000.dcm``, ``0001.dcm``, ... in instance order.
    instances : int
        Number of slices (at least 1).
    rows, columns : int, optional
        Matrix size (each at least 16).
    seed : int, optional
        Non-negative seed; the same arguments give byte-identical files.
    patient_id : str, optional
        Patient ID (0010,0020).
    patient_name : str, optional
        Patient's Name (0010,0010), DICOM PN syntax (``FAMILY^GIVEN``).
    study_instance_uid : str or None, optional
        Study Instance UID to use; derived from `seed` and `patient_id` if
        omitted, so that several series can be added to one study.

    Returns
    -------
    list of Path
        The files written, in instance order.

    Raises
    ------
    ValueError
        If an argument is out of range.
    """
    if instances < 1:
        raise ValueError("instances must be at least 1")
    if rows < 16 or columns < 16:
        raise ValueError("rows and columns must be at least 16")
    if seed < 0:
        raise ValueError("seed must be non-negative")
    rng = np.random.default_rng([seed, 0xBE4C])
    birth = date(int(rng.integers(1940, 2000)), int(rng.integers(1, 13)), int(rng.integers(1, 29)))
    study_day = date(2024, 1, 1) + timedelta(days=int(rng.integers(0, 366)))
    patient = _Patient(
        index=0,
        patient_id=patient_id,
        name=patient_name,
        sex="O",
        birth_date=birth,
        weight_kg=float(rng.integers(55, 100)),
    )
    uid = study_instance_uid or _uid("bench-ct-study", seed, patient_id)
    plan = _StudyPlan(
        patient=patient,
        index=0,
        kind="CT",
        modality="CT",
        study_uid=uid,
        study_date=study_day,
        study_time=time(int(rng.integers(7, 19)), int(rng.integers(0, 60)), 0),
        accession=f"BN{int(rng.integers(10**7, 10**8))}",
        study_id="1",
        description="CT CHEST BENCHMARK",
        body_part="CHEST",
        referring=_REFERRING_PHYSICIANS[0],
        uid_parts=("bench-ct", str(seed), patient_id, uid, str(instances)),
    )
    return _write_ct_series(
        Path(out_dir),
        plan,
        series_index=0,
        instances=instances,
        rows=rows,
        columns=columns,
        rng=np.random.default_rng([seed, 0xC7C7]),
        description=f"AX {instances} SLICES BENCHMARK",
    )


# ---------------------------------------------------------------------------
# Planning: patients and studies
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Sizes:
    ct_slices: int
    ct_matrix: int
    mr_slices: int
    mr_matrix: int
    xr_matrix: int
    us_frames: int
    us_rows: int
    us_columns: int


_SMALL_SIZES: Final = _Sizes(
    ct_slices=8,
    ct_matrix=128,
    mr_slices=6,
    mr_matrix=128,
    xr_matrix=256,
    us_frames=10,
    us_rows=96,
    us_columns=128,
)
_FULL_SIZES: Final = _Sizes(
    ct_slices=40,
    ct_matrix=512,
    mr_slices=20,
    mr_matrix=256,
    xr_matrix=1024,
    us_frames=30,
    us_rows=240,
    us_columns=320,
)


@dataclass(frozen=True)
class _Patient:
    index: int
    patient_id: str
    name: str
    sex: str
    birth_date: date
    weight_kg: float


@dataclass(frozen=True)
class _StudyPlan:
    patient: _Patient
    index: int
    kind: str  # CT, MR, XR, US
    modality: str  # DICOM modality (XR becomes CR or DX)
    study_uid: str
    study_date: date
    study_time: time
    accession: str
    study_id: str
    description: str
    body_part: str
    referring: str
    uid_parts: tuple[str, ...]


def _uid(*parts: object) -> str:
    """Return a deterministic UID under :data:`UID_ROOT` derived from `parts`."""
    return _uuid_uid("|".join(["openvna-sample", *(str(p) for p in parts)]))


def _make_patients(rng: np.random.Generator, count: int) -> list[_Patient]:
    family = [str(n) for n in rng.permutation(np.array(_FAMILY_NAMES))]
    accented = [str(n) for n in rng.permutation(np.array(_ACCENTED_FAMILY_NAMES))]
    female = [str(n) for n in rng.permutation(np.array(_FEMALE_GIVEN_NAMES))]
    male = [str(n) for n in rng.permutation(np.array(_MALE_GIVEN_NAMES))]
    base_id = int(rng.integers(100_000, 900_000))
    accented_index = 1 if count > 1 else 0
    patients: list[_Patient] = []
    for i in range(count):
        sex = "F" if i % 2 == 0 else "M"
        givens = female if sex == "F" else male
        family_name = accented[0] if i == accented_index else family[i % len(family)]
        given = givens[(i // 2) % len(givens)]
        # Ages between ~5 and ~90 at the time of the studies.
        birth = date(
            int(rng.integers(1933, 2016)), int(rng.integers(1, 13)), int(rng.integers(1, 29))
        )
        weight = float(rng.integers(45, 110)) if birth.year < 2005 else float(rng.integers(18, 60))
        patients.append(
            _Patient(
                index=i,
                patient_id=f"SYN{base_id + i:06d}",
                name=f"{family_name}^{given}",
                sex=sex,
                birth_date=birth,
                weight_kg=weight,
            )
        )
    return patients


def _plan_studies(rng: np.random.Generator, seed: int, patient: _Patient) -> list[_StudyPlan]:
    kinds = [str(k) for k in rng.permutation(np.array(["CT", "MR", "XR", "US"]))]
    if patient.index % 2 == 0:
        # Follow-up of the earliest cross-sectional study, in the latest year.
        kinds.append(next(k for k in kinds if k in ("CT", "MR")))
    years = np.sort(
        rng.choice(np.arange(_FIRST_YEAR, _LAST_YEAR + 1), size=len(kinds), replace=False)
    )
    xr_modality = "DX" if patient.index % 2 == 0 else "CR"
    plans: list[_StudyPlan] = []
    for s, (kind, year) in enumerate(zip(kinds, years, strict=True)):
        day = date(int(year), 1, 1) + timedelta(days=int(rng.integers(0, 364)))
        start = time(int(rng.integers(7, 19)), int(rng.integers(0, 60)), int(rng.integers(0, 60)))
        follow_up = kind in kinds[:s]
        modality = xr_modality if kind == "XR" else kind
        description, body_part = _STUDY_DESCRIPTIONS[kind]
        if follow_up:
            description = f"{description} FOLLOW-UP"
        parts = ("study", str(seed), str(patient.index), str(s))
        plans.append(
            _StudyPlan(
                patient=patient,
                index=s,
                kind=kind,
                modality=modality,
                study_uid=_uid(*parts),
                study_date=day,
                study_time=start,
                accession=f"A{int(rng.integers(10**8, 10**9))}",
                study_id=str(s + 1),
                description=description,
                body_part=body_part,
                referring=_REFERRING_PHYSICIANS[int(rng.integers(0, len(_REFERRING_PHYSICIANS)))],
                uid_parts=parts,
            )
        )
    return plans


_STUDY_DESCRIPTIONS: Final = {
    "CT": ("CT CHEST WITHOUT CONTRAST", "CHEST"),
    "MR": ("MR BRAIN WITHOUT CONTRAST", "HEAD"),
    "XR": ("XR CHEST", "CHEST"),
    "US": ("US ABDOMEN LIMITED", "ABDOMEN"),
}


# ---------------------------------------------------------------------------
# Dataset helpers
# ---------------------------------------------------------------------------


def _ds(value: float) -> str:
    """Format a number as a DICOM DS string (at most 16 characters)."""
    text = f"{value:.6f}".rstrip("0").rstrip(".")
    if text in ("-0", ""):
        text = "0"
    return text[:16]


def _da(day: date) -> str:
    return day.strftime("%Y%m%d")


def _tm(moment: datetime) -> str:
    return f"{moment:%H%M%S}.{moment.microsecond // 1000:03d}"


def _age(birth: date, on: date) -> str:
    years = on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))
    return f"{max(years, 0):03d}Y"


def _study_start(plan: _StudyPlan) -> datetime:
    return datetime.combine(plan.study_date, plan.study_time)


def _base_dataset(
    plan: _StudyPlan,
    *,
    sop_class: str,
    sop_uid: str,
    series_uid: str,
    series_number: int,
    series_description: str,
    series_start: datetime,
    instance_number: int,
    content: datetime,
    model: str,
) -> Dataset:
    """Patient, study, series, equipment and SOP common attributes."""
    patient = plan.patient
    ds = Dataset()
    ds.SpecificCharacterSet = _CHARSET
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = _da(plan.study_date)
    ds.SeriesDate = _da(series_start.date())
    ds.AcquisitionDate = _da(content.date())
    ds.ContentDate = _da(content.date())
    ds.StudyTime = plan.study_time.strftime("%H%M%S")
    ds.SeriesTime = _tm(series_start)
    ds.AcquisitionTime = _tm(content)
    ds.ContentTime = _tm(content)
    ds.AccessionNumber = plan.accession
    ds.Modality = plan.modality
    ds.Manufacturer = _MANUFACTURER
    ds.InstitutionName = _INSTITUTION
    ds.ReferringPhysicianName = plan.referring
    ds.StationName = f"SYN{plan.modality}01"
    ds.StudyDescription = plan.description
    ds.SeriesDescription = series_description
    ds.ManufacturerModelName = model
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.IssuerOfPatientID = "OPENVNA-SYNTHETIC"
    ds.PatientBirthDate = _da(patient.birth_date)
    ds.PatientSex = patient.sex
    ds.PatientAge = _age(patient.birth_date, plan.study_date)
    ds.PatientWeight = _ds(patient.weight_kg)
    ds.PatientComments = _SYNTHETIC_NOTE
    ds.BodyPartExamined = plan.body_part
    ds.DeviceSerialNumber = f"SN{plan.modality}0001"
    ds.SoftwareVersions = "1.0"
    ds.StudyInstanceUID = plan.study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyID = plan.study_id
    ds.SeriesNumber = series_number
    ds.InstanceNumber = instance_number
    return ds


def _set_pixels(ds: Dataset, pixels: npt.NDArray[np.generic], bits_allocated: int) -> None:
    ds.add_new(0x7FE00010, "OW" if bits_allocated > 8 else "OB", pixels.tobytes())


def _write(path: Path, ds: Dataset, transfer_syntax: UID) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = UID(IMPLEMENTATION_CLASS_UID)
    meta.ImplementationVersionName = _IMPLEMENTATION_VERSION_NAME
    ds.file_meta = meta
    path.parent.mkdir(parents=True, exist_ok=True)
    dcmwrite(path, ds, enforce_file_format=True)
    return path


def _instance_path(series_dir: Path, instance_index: int) -> Path:
    return series_dir / f"{instance_index:04d}.dcm"


def _window(values: FloatArray) -> tuple[str, str]:
    low, high = np.percentile(values, [1.0, 99.0])
    return _ds(round(float(low + high) / 2.0)), _ds(max(round(float(high - low)), 1))


def _grid(rows: int, columns: int) -> tuple[FloatArray, FloatArray]:
    """Normalised coordinates in [-1, 1], shape (rows, 1) and (1, columns)."""
    y = ((np.arange(rows) + 0.5) / rows * 2.0 - 1.0).astype(np.float32).reshape(rows, 1)
    x = ((np.arange(columns) + 0.5) / columns * 2.0 - 1.0).astype(np.float32).reshape(1, columns)
    return y, x


def _box_blur(img: FloatArray, radius: int) -> FloatArray:
    """Separable box blur (vectorised with cumulative sums, edges replicated)."""
    if radius < 1:
        return img
    size = 2 * radius + 1
    out = img
    for axis in (-2, -1):
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius + 1, radius)
        padded = np.pad(out, pad, mode="edge")
        summed = np.cumsum(padded, axis=axis, dtype=np.float32)
        n = out.shape[axis]
        upper = np.take(summed, np.arange(size, size + n), axis=axis)
        lower = np.take(summed, np.arange(0, n), axis=axis)
        out = ((upper - lower) / size).astype(np.float32)
    return out


# ---------------------------------------------------------------------------
# CT
# ---------------------------------------------------------------------------

_CT_CHUNK: Final = 16


@lru_cache(maxsize=4)
def _ct_static_layers(
    rows: int, columns: int
) -> tuple[npt.NDArray[np.bool_], FloatArray, npt.NDArray[np.bool_], FloatArray]:
    """Slice-independent parts of the chest phantom (cached, read-only).

    Returns the mask and HU values of the structures drawn on top of every
    slice (aorta, vertebra, spinal canal), the chest-wall ring that holds the
    ribs, and the angular coordinate used to place the ribs.
    """
    y, x = _grid(rows, columns)
    values = np.full((rows, columns), np.nan, dtype=np.float32)
    aorta = ((y - 0.28) / 0.07) ** 2 + ((x - 0.10) / 0.07) ** 2
    values[aorta <= 1.0] = 50.0
    vertebra = ((y - 0.45) / 0.10) ** 2 + (x / 0.09) ** 2
    values[vertebra <= 1.0] = 1000.0  # cortical rim
    values[vertebra <= 0.6] = 300.0  # cancellous core
    canal = ((y - 0.60) / 0.04) ** 2 + (x / 0.04) ** 2
    values[canal <= 1.0] = 20.0
    mask = ~np.isnan(values)
    # Chest-wall ring, in the body's normalised polar coordinates.
    yn = (y - 0.05) / 0.64
    xn = x / 0.86
    rho = np.sqrt(yn * yn + xn * xn)
    phi = np.arctan2(yn, np.abs(xn)).astype(np.float32)  # same angle on both sides
    ring = (rho > 0.80) & (rho < 0.87) & (np.abs(phi) < 1.35)
    layers = (mask, np.nan_to_num(values), ring, phi)
    for layer in layers:
        layer.flags.writeable = False
    return layers


def _ct_slices(
    rng: np.random.Generator, z: Sequence[float], rows: int, columns: int
) -> npt.NDArray[np.int16]:
    """Chest CT slices in stored values (HU + 1024), one per entry of `z`.

    `z` runs from 0 (lung apices) to 1 (upper abdomen).
    """
    y, x = _grid(rows, columns)
    n = len(z)
    zz = np.asarray(z, dtype=np.float32).reshape(n, 1, 1)
    static_mask, static_values, ring, phi = _ct_static_layers(rows, columns)
    hu = np.full((n, rows, columns), -1000.0, dtype=np.float32)
    # Patient table below the body.
    hu[:, (y > 0.78).ravel() & (y < 0.84).ravel(), :] = 150.0
    body_ry = np.float32(0.62) + np.float32(0.04) * zz
    body = ((y - np.float32(0.05)) / body_ry) ** 2 + (x / np.float32(0.86)) ** 2
    hu = np.where(body <= 1.0, np.float32(-100.0), hu)  # subcutaneous fat
    hu = np.where(body <= 0.80, np.float32(40.0), hu)  # muscle / soft tissue
    # Lungs shrink towards the apices and the diaphragm.
    extent = np.clip(np.sin(np.float32(np.pi) * (0.1 + 0.8 * zz)), 0.05, 1.0)
    lung_ry = np.float32(0.40) * extent + np.float32(0.02)
    lung_rx = np.float32(0.27) * extent + np.float32(0.02)
    lung_y = ((y + np.float32(0.02)) / lung_ry) ** 2
    for side in (-1.0, 1.0):
        lung = lung_y + ((x - np.float32(side * 0.36)) / lung_rx) ** 2
        hu = np.where(lung <= 1.0, np.float32(-850.0), hu)
    # Heart in the lower half of the chest (patient left = image right).
    heart_r = np.float32(0.24) * np.sin(np.float32(np.pi) * np.clip((zz - 0.3) / 0.7, 0.0, 1.0))
    heart_r = np.maximum(heart_r, np.float32(1e-3))
    heart = ((y + np.float32(0.05)) / (heart_r * np.float32(0.9))) ** 2 + (
        (x - np.float32(0.10)) / heart_r
    ) ** 2
    hu = np.where((heart <= 1.0) & (heart_r > 0.01), np.float32(45.0), hu)
    # Ribs: short arcs of the chest-wall ring whose angles drift with z.
    offset = np.float32(0.12) * np.sin(np.float32(9.0) * zz)
    u = (phi - offset) / np.float32(0.6)
    ribs = (np.abs(u - np.rint(u)) < 0.085) & ring
    hu = np.where(ribs, np.float32(800.0), hu)
    hu = np.where(static_mask, static_values, hu)
    # Quantum noise (sigma 12 HU): windows of a shared noise bank at random
    # offsets, much cheaper than fresh normal samples for every pixel.
    pixels = rows * columns
    bank = rng.standard_normal(2 * pixels, dtype=np.float32) * np.float32(12.0)
    for i, start in enumerate(rng.integers(0, pixels, size=n)):
        hu[i] += bank[start : start + pixels].reshape(rows, columns)
    np.rint(hu, out=hu)
    np.clip(hu, -1024.0, 3071.0, out=hu)
    hu += np.float32(1024.0)
    return hu.astype(np.int16)


def _write_ct_series(
    series_dir: Path,
    plan: _StudyPlan,
    *,
    series_index: int,
    instances: int,
    rows: int,
    columns: int,
    rng: np.random.Generator,
    description: str = "AX 5.0 SOFT TISSUE",
) -> list[Path]:
    series_uid = _uid(*plan.uid_parts, "series", series_index)
    frame_uid = _uid(*plan.uid_parts, "frame-of-reference")
    series_start = _study_start(plan) + timedelta(minutes=2)
    fov = 360.0
    spacing = fov / columns
    thickness = 5.0 if instances <= 80 else 1.25
    z_top = -20.0
    x0 = -fov / 2 + spacing / 2
    y0 = -(rows * spacing) / 2 + spacing / 2
    denominator = max(instances - 1, 1)
    paths: list[Path] = []
    for start in range(0, instances, _CT_CHUNK):
        count = min(_CT_CHUNK, instances - start)
        z = [(start + i) / denominator for i in range(count)]
        block = _ct_slices(rng, z, rows, columns)
        for i in range(count):
            index = start + i
            pixels = block[i]
            z_pos = z_top - index * thickness
            content = series_start + timedelta(milliseconds=250 * index)
            ds = _base_dataset(
                plan,
                sop_class=CTImageStorage,
                sop_uid=_uid(*plan.uid_parts, "instance", series_index, index),
                series_uid=series_uid,
                series_number=series_index + 1,
                series_description=description,
                series_start=series_start,
                instance_number=index + 1,
                content=content,
                model="SynthCT 64",
            )
            ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
            ds.ScanOptions = "HELICAL MODE"
            ds.SliceThickness = _ds(thickness)
            ds.KVP = "120"
            ds.DataCollectionDiameter = "500"
            ds.ReconstructionDiameter = _ds(fov)
            ds.GantryDetectorTilt = "0"
            ds.TableHeight = "160"
            ds.RotationDirection = "CW"
            ds.XRayTubeCurrent = 200
            ds.ExposureTime = 500
            ds.ConvolutionKernel = "STANDARD"
            ds.PatientPosition = "HFS"
            ds.AcquisitionNumber = 1
            ds.ImagePositionPatient = [_ds(x0), _ds(y0), _ds(z_pos)]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = _ds(z_pos)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = rows
            ds.Columns = columns
            ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = 1
            ds.WindowCenter = ["40", "-600"]
            ds.WindowWidth = ["400", "1500"]
            ds.WindowCenterWidthExplanation = ["SOFT TISSUE", "LUNG"]
            ds.RescaleIntercept = "-1024"
            ds.RescaleSlope = "1"
            ds.RescaleType = "HU"
            _set_pixels(ds, pixels, 16)
            paths.append(_write(_instance_path(series_dir, index), ds, ExplicitVRLittleEndian))
    return paths


def _write_ct_study(
    study_dir: Path, plan: _StudyPlan, sizes: _Sizes, rng: np.random.Generator
) -> list[Path]:
    return _write_ct_series(
        study_dir / "0",
        plan,
        series_index=0,
        instances=sizes.ct_slices,
        rows=sizes.ct_matrix,
        columns=sizes.ct_matrix,
        rng=rng,
    )


# ---------------------------------------------------------------------------
# MR
# ---------------------------------------------------------------------------

# Tissue intensities (fat, skull, CSF, grey matter, white matter) per weighting.
_MR_CONTRASTS: Final = {
    "T1": (1500.0, 60.0, 250.0, 700.0, 1000.0),
    "T2": (1100.0, 60.0, 2000.0, 1000.0, 750.0),
}


def _mr_slices(
    rng: np.random.Generator, weighting: str, slices: int, matrix: int
) -> npt.NDArray[np.uint16]:
    """Axial brain MR slices (uint16, 12 bits stored)."""
    fat, bone, csf, grey, white = _MR_CONTRASTS[weighting]
    y, x = _grid(matrix, matrix)
    zz = (np.arange(slices, dtype=np.float32) / max(slices - 1, 1)).reshape(slices, 1, 1)
    y3 = y.reshape(1, matrix, 1)
    x3 = x.reshape(1, 1, matrix)
    # Head radius shrinks towards the vertex (z = 0) and skull base (z = 1).
    scale = np.clip(np.sqrt(np.clip(1.0 - ((zz - 0.55) / 0.75) ** 2, 0.0, 1.0)), 0.3, 1.0)
    head = (y3 / (0.86 * scale)) ** 2 + (x3 / (0.72 * scale)) ** 2
    img = np.zeros((slices, matrix, matrix), dtype=np.float32)
    img = np.where(head <= 1.0, fat, img)  # scalp
    img = np.where(head <= 0.88, bone, img)  # skull
    img = np.where(head <= 0.78, csf, img)  # subarachnoid CSF
    img = np.where(head <= 0.72, grey, img)  # cortex
    # White matter with a folded (gyral) boundary.
    theta = np.arctan2(y3, x3)
    folds = np.float32(0.5) + np.float32(0.07) * np.sin(
        np.float32(15.0) * theta + np.float32(6.0) * zz
    )
    img = np.where(head <= folds, white, img)
    # Deep grey nuclei and lateral ventricles in the middle slices.
    middle = np.exp(-(((zz - 0.55) / 0.2) ** 2))
    for side in (-1.0, 1.0):
        nucleus = ((y3 - 0.05) / (0.12 * middle + 1e-3)) ** 2 + (
            (x3 - side * 0.2) / (0.07 * middle + 1e-3)
        ) ** 2
        img = np.where(nucleus <= 1.0, grey, img)
        ventricle = ((y3 + 0.05) / (0.30 * middle + 1e-3)) ** 2 + (
            (x3 - side * 0.07) / (0.05 * middle + 1e-3)
        ) ** 2
        img = np.where(ventricle <= 1.0, csf, img)
    # Smooth coil sensitivity (bias field) and Rician noise.
    bias = np.float32(1.0) + np.float32(0.15) * (y3 * np.float32(-0.8) + x3 * np.float32(0.3))
    img = img * bias
    sigma = np.float32(25.0)
    real = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(img.shape, dtype=np.float32)
    magnitude = np.sqrt(real * real + imag * imag)
    out: npt.NDArray[np.uint16] = np.clip(np.rint(magnitude), 0.0, 4095.0).astype(np.uint16)
    return out


def _write_mr_study(
    study_dir: Path, plan: _StudyPlan, sizes: _Sizes, rng: np.random.Generator
) -> list[Path]:
    series_specs = (
        ("T1", "AX T1 SE", "SE", "NONE", 500.0, 15.0, 1),
        ("T2", "AX T2 TSE", "SE", "SK", 4000.0, 100.0, 16),
    )
    matrix = sizes.mr_matrix
    slices = sizes.mr_slices
    fov = 230.0
    spacing = fov / matrix
    thickness = 5.0
    gap = 6.0
    frame_uid = _uid(*plan.uid_parts, "frame-of-reference")
    paths: list[Path] = []
    for series_index, (weighting, desc, scan, variant, tr, te, etl) in enumerate(series_specs):
        series_dir = study_dir / str(series_index)
        series_uid = _uid(*plan.uid_parts, "series", series_index)
        series_start = _study_start(plan) + timedelta(minutes=3 + 6 * series_index)
        volume = _mr_slices(rng, weighting, slices, matrix)
        window_center, window_width = _window(volume.astype(np.float32))
        for index in range(slices):
            content = series_start + timedelta(seconds=4 * index)
            z_pos = 60.0 - index * gap
            ds = _base_dataset(
                plan,
                sop_class=MRImageStorage,
                sop_uid=_uid(*plan.uid_parts, "instance", series_index, index),
                series_uid=series_uid,
                series_number=series_index + 1,
                series_description=desc,
                series_start=series_start,
                instance_number=index + 1,
                content=content,
                model="SynthMR 1.5T",
            )
            ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "ND"]
            ds.ScanningSequence = scan
            ds.SequenceVariant = variant
            ds.ScanOptions = "" if etl == 1 else "FAST_GEMS"
            ds.MRAcquisitionType = "2D"
            ds.SequenceName = "se2d1" if etl == 1 else "tse2d1_16"
            ds.SliceThickness = _ds(thickness)
            ds.SpacingBetweenSlices = _ds(gap)
            ds.RepetitionTime = _ds(tr)
            ds.EchoTime = _ds(te)
            ds.EchoTrainLength = etl
            ds.NumberOfAverages = "1"
            ds.ImagingFrequency = "63.87"
            ds.ImagedNucleus = "1H"
            ds.MagneticFieldStrength = "1.5"
            ds.FlipAngle = "90"
            ds.PatientPosition = "HFS"
            ds.AcquisitionNumber = 1
            ds.ImagePositionPatient = [
                _ds(-fov / 2 + spacing / 2),
                _ds(-fov / 2 + spacing / 2),
                _ds(z_pos),
            ]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.FrameOfReferenceUID = frame_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = _ds(z_pos)
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows = matrix
            ds.Columns = matrix
            ds.PixelSpacing = [_ds(spacing), _ds(spacing)]
            ds.BitsAllocated = 16
            ds.BitsStored = 12
            ds.HighBit = 11
            ds.PixelRepresentation = 0
            ds.WindowCenter = window_center
            ds.WindowWidth = window_width
            _set_pixels(ds, volume[index], 16)
            paths.append(_write(_instance_path(series_dir, index), ds, ExplicitVRLittleEndian))
    return paths


# ---------------------------------------------------------------------------
# CR / DX
# ---------------------------------------------------------------------------


def _projection(
    y: FloatArray, x: FloatArray, cy: float, cx: float, ry: float, rx: float
) -> FloatArray:
    """Normalised thickness of an ellipsoid seen in projection (0 outside, 1 at centre)."""
    q = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
    return np.sqrt(np.clip(1.0 - q, 0.0, 1.0)).astype(np.float32)


def _chest_radiograph(rng: np.random.Generator, matrix: int, view: str) -> npt.NDArray[np.uint16]:
    """Chest radiograph (MONOCHROME2: bright = attenuating), 12 bits stored.

    A simple projection model: the image is the sum of the attenuation of
    ellipsoidal body parts (trunk, lungs, heart, mediastinum, spine, ribs).
    """
    y, x = _grid(matrix, matrix)
    shape = (matrix, matrix)
    ax = np.abs(x)
    if view == "PA":
        body = np.maximum.reduce(
            [
                _projection(y, x, 0.45, 0.0, 1.3, 0.84),
                _projection(y, x, -0.62, -0.55, 0.22, 0.42),
                _projection(y, x, -0.62, 0.55, 0.22, 0.42),
                _projection(y, x, -0.9, 0.0, 0.6, 0.17),
            ]
        )
        # Diaphragm domes peak under the middle of each lung.
        dome = np.float32(0.3) + np.float32(0.7) * (ax - np.float32(0.36)) ** 2
        lungs = _projection(y, x, -0.08, -0.37, 0.6, 0.27) + _projection(
            y, x, -0.08, 0.37, 0.6, 0.27
        )
        heart = _projection(y, x, 0.18, 0.13, 0.26, 0.28)
        mediastinum = _projection(y, x, -0.2, 0.0, 0.6, 0.13)
        spine_x = 0.0
        rib_phase = (y + np.float32(0.3) * x * x - np.float32(0.12) * ax) * np.float32(8.0)
    else:
        body = np.maximum(
            _projection(y, x, 0.45, 0.0, 1.3, 0.66), _projection(y, x, -0.9, 0.1, 0.6, 0.2)
        )
        dome = np.float32(0.3) + np.float32(0.4) * (x + np.float32(0.05)) ** 2
        lungs = np.float32(1.3) * _projection(y, x, -0.06, 0.02, 0.6, 0.44)
        heart = _projection(y, x, 0.15, -0.22, 0.28, 0.26)
        mediastinum = _projection(y, x, -0.3, -0.05, 0.4, 0.1)
        spine_x = 0.45
        rib_phase = (y - np.float32(0.25) * x) * np.float32(8.0)
    inside = body > 0.0
    above_diaphragm = y < dome
    img = np.full(shape, 250.0, dtype=np.float32)  # direct exposure
    img += np.float32(2200.0) * body
    img -= np.float32(1200.0) * np.minimum(lungs, 1.0) * above_diaphragm
    img += np.float32(550.0) * heart + np.float32(300.0) * mediastinum
    # Spine: bright vertical band with vertebral end-plate modulation.
    spine = (np.abs(x - spine_x) < 0.065) & inside & (y > -0.95)
    plates = np.where(np.cos(y * np.float32(40.0)) > 0.85, np.float32(120.0), np.float32(0.0))
    img += np.where(spine, np.float32(420.0) + plates, np.float32(0.0))
    # Ribs: curved periodic bands above the diaphragm.
    ribs = (np.sin(np.float32(2.0 * np.pi) * rib_phase) > 0.7) & inside & (y < dome + 0.05)
    img += np.where(ribs & (y > -0.75), np.float32(260.0), np.float32(0.0))
    if view == "PA":
        clavicle = (np.abs(y + 0.6 - 0.18 * ax) < 0.03) & (ax > 0.06) & (ax < 0.6)
        img += np.where(clavicle, np.float32(450.0), np.float32(0.0))
    img = _box_blur(img.astype(np.float32), max(matrix // 256, 1))
    img = img + rng.standard_normal(shape, dtype=np.float32) * np.float32(25.0)
    return np.clip(np.rint(img), 0.0, 4095.0).astype(np.uint16)


def _write_xr_study(
    study_dir: Path, plan: _StudyPlan, sizes: _Sizes, rng: np.random.Generator
) -> list[Path]:
    views = ("PA", "LL") if rng.random() < 0.5 else ("PA",)
    matrix = sizes.xr_matrix
    imager_spacing = 430.0 / matrix
    is_dx = plan.modality == "DX"
    series_dir = study_dir / "0"
    series_uid = _uid(*plan.uid_parts, "series", 0)
    series_start = _study_start(plan) + timedelta(minutes=1)
    description = f"CHEST {'PA AND LATERAL' if len(views) == 2 else 'PA'}"
    paths: list[Path] = []
    for index, view in enumerate(views):
        pixels = _chest_radiograph(rng, matrix, view)
        window_center, window_width = _window(pixels.astype(np.float32))
        content = series_start + timedelta(seconds=45 * index)
        ds = _base_dataset(
            plan,
            sop_class=(
                DigitalXRayImageStorageForPresentation if is_dx else ComputedRadiographyImageStorage
            ),
            sop_uid=_uid(*plan.uid_parts, "instance", 0, index),
            series_uid=series_uid,
            series_number=1,
            series_description=description,
            series_start=series_start,
            instance_number=index + 1,
            content=content,
            model="SynthDR 43" if is_dx else "SynthCR 35",
        )
        ds.ImageType = ["ORIGINAL", "PRIMARY"]
        ds.KVP = "120" if view == "PA" else "125"
        ds.ExposureTime = 10
        ds.XRayTubeCurrent = 320
        ds.Exposure = 3
        ds.DistanceSourceToDetector = "1800"
        ds.ImagerPixelSpacing = [_ds(imager_spacing), _ds(imager_spacing)]
        ds.ViewPosition = view
        # Direction of the rows (left to right) and columns (top to bottom).
        ds.PatientOrientation = ["L", "F"] if view == "PA" else ["P", "F"]
        ds.ImageLaterality = "U"
        ds.AcquisitionNumber = 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = matrix
        ds.Columns = matrix
        ds.BitsAllocated = 16
        ds.BitsStored = 12
        ds.HighBit = 11
        ds.PixelRepresentation = 0
        ds.WindowCenter = window_center
        ds.WindowWidth = window_width
        ds.RescaleIntercept = "0"
        ds.RescaleSlope = "1"
        ds.RescaleType = "US"
        ds.LossyImageCompression = "00"
        if is_dx:
            ds.PresentationIntentType = "FOR PRESENTATION"
            ds.DetectorType = "SCINTILLATOR"
            ds.PixelIntensityRelationship = "LOG"
            ds.PixelIntensityRelationshipSign = 1
            ds.BurnedInAnnotation = "NO"
        else:
            ds.PlateType = "STANDARD"
        _set_pixels(ds, pixels, 16)
        paths.append(_write(_instance_path(series_dir, index), ds, ImplicitVRLittleEndian))
    return paths


# ---------------------------------------------------------------------------
# US
# ---------------------------------------------------------------------------


def _us_cine(
    rng: np.random.Generator, frames: int, rows: int, columns: int, frame_rate: float
) -> npt.NDArray[np.uint8]:
    """Sector-scan abdominal cine loop, RGB uint8, shape (frames, rows, columns, 3)."""
    r_idx = np.arange(rows, dtype=np.float32).reshape(1, rows, 1)
    c_idx = np.arange(columns, dtype=np.float32).reshape(1, 1, columns)
    t = (np.arange(frames, dtype=np.float32) / np.float32(frame_rate)).reshape(frames, 1, 1)
    apex_row = -0.06 * rows
    dy = (r_idx - apex_row) / rows
    dx = (c_idx - columns / 2.0) / rows
    radius = np.sqrt(dy * dy + dx * dx)
    angle = np.arctan2(dx, dy)
    fan = (np.abs(angle) < 0.62) & (radius > 0.1) & (radius < 1.02)
    # Echogenicity map: skin/fat layers, liver parenchyma, pulsating vessel,
    # diaphragm that moves with breathing.
    echo = np.full((frames, rows, columns), 0.55, dtype=np.float32)
    echo = np.where((radius > 0.1) & (radius < 0.14), 0.95, echo)
    echo = np.where((radius > 0.18) & (radius < 0.2), 0.85, echo)
    breathing = np.float32(0.03) * np.sin(np.float32(2.0 * np.pi / 4.0) * t)
    diaphragm = np.abs(radius - (np.float32(0.82) + breathing)) < 0.02
    echo = np.where(diaphragm, 1.0, echo)
    echo = np.where(radius > np.float32(0.84) + breathing, 0.3, echo)
    pulse = np.float32(1.0) + np.float32(0.2) * np.sin(np.float32(2.0 * np.pi * 1.2) * t)
    vessel_y = 0.5 + 0.02 * np.sin(np.float32(2.0 * np.pi / 4.0) * t)
    vessel = ((dy - vessel_y) ** 2 + (dx - 0.1) ** 2) <= (0.07 * pulse) ** 2
    vessel_wall = ((dy - vessel_y) ** 2 + (dx - 0.1) ** 2) <= (0.085 * pulse) ** 2
    echo = np.where(vessel_wall, 0.9, echo)
    echo = np.where(vessel, 0.02, echo)
    # Speckle: Rayleigh amplitude, mostly tissue-bound with some per-frame
    # decorrelation, shifted axially with breathing.
    base = np.abs(
        rng.standard_normal((rows, columns), dtype=np.float32)
        + 1j * rng.standard_normal((rows, columns), dtype=np.float32)
    ).astype(np.float32)
    shifts = np.rint(np.float32(0.03) * rows * np.sin(np.float32(2.0 * np.pi / 4.0) * t.ravel()))
    row_index = (
        np.arange(rows).reshape(1, rows) - shifts.astype(np.int64).reshape(frames, 1)
    ) % rows
    tissue = base[row_index]  # (frames, rows, columns)
    fresh = np.abs(
        rng.standard_normal((frames, rows, columns), dtype=np.float32)
        + 1j * rng.standard_normal((frames, rows, columns), dtype=np.float32)
    ).astype(np.float32)
    speckle = np.float32(0.8) * tissue + np.float32(0.2) * fresh
    speckle = (speckle + np.roll(speckle, 1, axis=2)) * np.float32(0.5)
    # Depth attenuation partly compensated by time-gain compensation.
    gain = np.exp(np.float32(-0.6) * radius).astype(np.float32)
    intensity = echo * speckle * gain
    gray = np.log1p(np.float32(12.0) * intensity) / np.log1p(np.float32(12.0 * 2.2))
    gray = np.where(fan, np.clip(gray, 0.0, 1.0) * np.float32(235.0), 0.0)
    rgb = np.repeat(gray[..., np.newaxis], 3, axis=3)
    # Depth scale: yellow tick marks every 10% of the image height at the right.
    ticks = np.zeros((rows, columns), dtype=bool)
    tick_rows = (np.arange(rows) % max(rows // 10, 1)) < max(rows // 96, 1)
    ticks[tick_rows, columns - max(columns // 32, 2) : columns - 1] = True
    rgb[:, ticks, 0] = 230.0
    rgb[:, ticks, 1] = 200.0
    rgb[:, ticks, 2] = 40.0
    # Orientation marker: small cyan square left of the apex.
    size = max(rows // 24, 2)
    rgb[:, 2 : 2 + size, 2 : 2 + size, 0] = 40.0
    rgb[:, 2 : 2 + size, 2 : 2 + size, 1] = 200.0
    rgb[:, 2 : 2 + size, 2 : 2 + size, 2] = 230.0
    out: npt.NDArray[np.uint8] = np.clip(np.rint(rgb), 0.0, 255.0).astype(np.uint8)
    return out


def _write_us_study(
    study_dir: Path, plan: _StudyPlan, sizes: _Sizes, rng: np.random.Generator
) -> list[Path]:
    frames, rows, columns = sizes.us_frames, sizes.us_rows, sizes.us_columns
    frame_rate = 30.0
    frame_time = 1000.0 / frame_rate
    pixels = _us_cine(rng, frames, rows, columns, frame_rate)
    series_start = _study_start(plan) + timedelta(minutes=1)
    ds = _base_dataset(
        plan,
        sop_class=UltrasoundMultiFrameImageStorage,
        sop_uid=_uid(*plan.uid_parts, "instance", 0, 0),
        series_uid=_uid(*plan.uid_parts, "series", 0),
        series_number=1,
        series_description="ABDOMEN CINE",
        series_start=series_start,
        instance_number=1,
        content=series_start + timedelta(seconds=30),
        model="SynthUS C5",
    )
    ds.ImageType = ["ORIGINAL", "PRIMARY", "ABDOMINAL", "0001"]
    ds.TransducerData = ["C5-2", "", ""]
    ds.ProcessingFunction = "ABDOMEN"
    ds.TransducerType = "CURVED LINEAR"
    ds.FrameTime = _ds(frame_time)
    ds.FrameIncrementPointer = 0x00181063  # Frame Time
    ds.CineRate = int(frame_rate)
    ds.RecommendedDisplayFrameRate = int(frame_rate)
    ds.ActualFrameDuration = round(frame_time)
    ds.PreferredPlaybackSequencing = 0
    ds.NumberOfFrames = frames
    ds.SamplesPerPixel = 3
    ds.PhotometricInterpretation = "RGB"
    ds.PlanarConfiguration = 0
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "00"
    ds.BurnedInAnnotation = "NO"
    depth_cm = 16.0
    region = Dataset()
    region.RegionSpatialFormat = 1  # 2D
    region.RegionDataType = 1  # tissue
    region.RegionFlags = 0
    region.RegionLocationMinX0 = 0
    region.RegionLocationMinY0 = 0
    region.RegionLocationMaxX1 = columns - 1
    region.RegionLocationMaxY1 = rows - 1
    region.PhysicalUnitsXDirection = 3  # cm
    region.PhysicalUnitsYDirection = 3  # cm
    region.PhysicalDeltaX = depth_cm / rows
    region.PhysicalDeltaY = depth_cm / rows
    ds.SequenceOfUltrasoundRegions = DicomSequence([region])
    _set_pixels(ds, pixels, 8)
    path = _write(_instance_path(study_dir / "0", 0), ds, ExplicitVRLittleEndian)
    return [path]


_WRITERS: Final = {
    "CT": _write_ct_study,
    "MR": _write_mr_study,
    "XR": _write_xr_study,
    "US": _write_us_study,
}

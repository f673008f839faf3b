"""Synthetic sample DICOM data (no real patient data) for demos, tests and benchmarks."""

from openvna.sample.generator import GeneratedStudy, generate_ct_series, generate_samples

__all__ = ["GeneratedStudy", "generate_ct_series", "generate_samples"]

"""HTTP adapter: the archive's REST endpoints now, DICOMweb and the viewer next (issue #3)."""

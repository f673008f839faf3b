"""Unified Procedure Step (UPS) workitems: PS3.4 Annex CC served as UPS-RS (PS3.18 11).

Every AI job is also a workitem, so an external AI engine pulls work from OpenVNA the
standard way (IHE AI Workflow for Imaging): search, claim, report progress, complete.

- :mod:`openvna.ups.states`: the state machine of PS3.4 Table CC.1.1-2 and its errors.
- :mod:`openvna.ups.workitem`: DICOM JSON helpers, N-CREATE/N-SET rules, final state checks.
- :mod:`openvna.ups.search`: matching keys of the Search transaction (PS3.18 11.9).
- :mod:`openvna.ups.events`: event reports (PS3.4 CC.2.4) as DICOM JSON.
- :mod:`openvna.ups.service`: :class:`~openvna.ups.service.WorkitemService`, the one
  place that changes workitems, subscriptions and the event log.
"""

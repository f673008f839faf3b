"""Complete the studies of audit events with what the index knows about them.

Adapters often know only a Study Instance UID (from a WADO-RS path, a C-MOVE
identifier); A.5.3 wants the patient as a participant object too. The audit writer
looks the studies of a whole batch up in one query, off the request path, and fills in
patient ID and name, accession number and description where the event left them empty.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable

from sqlalchemy import Engine, select

from openvna.index.schema import patients, studies
from openvna.security.audit import AuditEvent, StudyRef

_LOOKUP_CHUNK = 500


@dataclasses.dataclass(frozen=True)
class StudyFacts:
    patient_id: str
    patient_name: str
    accession_number: str
    description: str


def study_facts(engine: Engine, study_uids: Iterable[str]) -> dict[str, StudyFacts]:
    """What the index holds about each of ``study_uids`` (absent ones are left out)."""
    wanted = sorted({uid for uid in study_uids if uid})
    found: dict[str, StudyFacts] = {}
    with engine.connect() as connection:
        for start in range(0, len(wanted), _LOOKUP_CHUNK):
            chunk = wanted[start : start + _LOOKUP_CHUNK]
            rows = connection.execute(
                select(
                    studies.c.study_instance_uid,
                    patients.c.patient_id,
                    patients.c.patient_name,
                    studies.c.accession_number,
                    studies.c.study_description,
                )
                .join(patients, patients.c.pk == studies.c.patient_pk)
                .where(studies.c.study_instance_uid.in_(chunk))
            )
            for uid, patient_id, patient_name, accession, description in rows:
                found[uid] = StudyFacts(patient_id, patient_name, accession, description)
    return found


def with_facts(event: AuditEvent, facts: dict[str, StudyFacts]) -> AuditEvent:
    """``event`` with its studies completed from ``facts`` (given values win)."""
    if not event.studies:
        return event
    completed = tuple(_complete(study, facts.get(study.study_uid)) for study in event.studies)
    return dataclasses.replace(event, studies=completed)


def _complete(study: StudyRef, facts: StudyFacts | None) -> StudyRef:
    if facts is None:
        return study
    return dataclasses.replace(
        study,
        patient_id=study.patient_id or facts.patient_id,
        patient_name=study.patient_name or facts.patient_name,
        accession_number=study.accession_number or facts.accession_number,
        description=study.description or facts.description,
    )

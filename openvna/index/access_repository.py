"""Study visibility and access grants: the SQL behind study-level access rules.

A restricted principal (a :class:`~openvna.security.authz.StudyAccess`) sees a study
when any of these holds:

- an explicit grant or a break-the-glass grant for its subject names the study, and it
  is neither revoked nor expired;
- the study's patient has an Issuer of Patient ID (0010,0021) in the list;
- one of the study's series has an Institution Name (0008,0080) in the list.

The rule is a SQL expression correlated to the ``studies`` table, so the query engine
puts it in the WHERE clause of QIDO-RS, C-FIND and retrieval lookups: results, counts,
``limit``/``offset`` paging and ``includefield`` values are all computed over visible
studies only, and nothing about a hidden study reaches the adapter.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, FromClause, and_, exists, func, or_, select, update
from sqlalchemy.sql.elements import ColumnElement
from sqlalchemy.sql.selectable import ScalarSelect

from openvna.index.schema import access_grants, ai_outputs, instances, patients, series, studies

if TYPE_CHECKING:
    from openvna.security.authz import StudyAccess

GRANT = "grant"
BREAK_GLASS = "break-glass"
KINDS = (GRANT, BREAK_GLASS)


def study_visible_clause(
    access: StudyAccess, study_table: FromClause = studies, now: float | None = None
) -> ColumnElement[bool]:
    """True for rows of ``study_table`` (``studies`` or an alias) the principal may see.

    The subqueries use their own aliases of ``patients`` and ``series``: correlated to
    the study alone, so a series-level query still asks "any series of this study", not
    "this series", and a query already joining ``patients`` stays unambiguous.
    """
    moment = time.time() if now is None else now
    grant = access_grants.alias("visible_grant")
    conditions: list[ColumnElement[bool]] = [
        exists()
        .where(
            grant.c.subject == access.subject,
            grant.c.study_instance_uid == study_table.c.study_instance_uid,
            grant.c.revoked_at.is_(None),
            or_(grant.c.expires_at.is_(None), grant.c.expires_at > moment),
        )
        .correlate(study_table)
    ]
    if access.issuers_of_patient_id:
        patient = patients.alias("visible_patient")
        conditions.append(
            exists()
            .where(
                patient.c.pk == study_table.c.patient_pk,
                patient.c.issuer_of_patient_id.in_(list(access.issuers_of_patient_id)),
            )
            .correlate(study_table)
        )
    if access.institutions:
        one_series = series.alias("visible_series")
        conditions.append(
            exists()
            .where(
                one_series.c.study_pk == study_table.c.pk,
                one_series.c.institution_name.in_(list(access.institutions)),
            )
            .correlate(study_table)
        )
    return or_(*conditions)


def patient_visible_clause(access: StudyAccess, now: float | None = None) -> ColumnElement[bool]:
    """True for ``patients`` rows with at least one visible study (PATIENT level)."""
    study = studies.alias("patient_study")
    return (
        exists()
        .where(study.c.patient_pk == patients.c.pk, study_visible_clause(access, study, now))
        .correlate(patients)
    )


def visible_patient_studies(access: StudyAccess, now: float | None = None) -> ScalarSelect[Any]:
    """Number of the patient's visible studies, a scalar subquery correlated to
    ``patients``: Number of Patient Related Studies must not count hidden ones."""
    study = studies.alias("counted_study")
    return (
        select(func.count())
        .select_from(study)
        .where(study.c.patient_pk == patients.c.pk, study_visible_clause(access, study, now))
        .correlate(patients)
        .scalar_subquery()
    )


def is_study_visible(engine: Engine, access: StudyAccess, study_uid: str) -> bool:
    """Whether the study exists and the principal may see it."""
    if not study_uid:
        return False
    statement = select(studies.c.pk).where(
        studies.c.study_instance_uid == study_uid, study_visible_clause(access)
    )
    with engine.connect() as connection:
        return connection.execute(statement.limit(1)).first() is not None


def study_exists(engine: Engine, study_uid: str) -> bool:
    statement = select(studies.c.pk).where(studies.c.study_instance_uid == study_uid)
    with engine.connect() as connection:
        return connection.execute(statement.limit(1)).first() is not None


def patient_id_of_study(engine: Engine, study_uid: str) -> str:
    """Patient ID of a stored study ('' when unknown), for audit records."""
    statement = (
        select(patients.c.patient_id)
        .join(studies, studies.c.patient_pk == patients.c.pk)
        .where(studies.c.study_instance_uid == study_uid)
    )
    with engine.connect() as connection:
        value = connection.execute(statement).scalar_one_or_none()
    return str(value) if value is not None else ""


def study_of_ai_output(engine: Engine, sop_instance_uid: str) -> str | None:
    """The study an AI output instance belongs to (None: no such output)."""
    statement = select(ai_outputs.c.study_instance_uid).where(
        ai_outputs.c.sop_instance_uid == sop_instance_uid
    )
    with engine.connect() as connection:
        value = connection.execute(statement.limit(1)).scalar_one_or_none()
    return str(value) if value is not None else None


def visible_counts(engine: Engine, access: StudyAccess) -> dict[str, int]:
    """Patients, studies, series and instances the principal may see (the counts of
    ``/api/system`` for a restricted principal: hidden studies are not counted)."""
    visible = study_visible_clause(access)
    visible_studies = select(studies.c.pk).where(visible)
    statements = {
        "patients": select(func.count())
        .select_from(patients)
        .where(patient_visible_clause(access)),
        "studies": select(func.count()).select_from(studies).where(visible),
        "series": select(func.count())
        .select_from(series)
        .where(series.c.study_pk.in_(visible_studies)),
        "instances": select(func.count())
        .select_from(instances)
        .join(series, instances.c.series_pk == series.c.pk)
        .where(series.c.study_pk.in_(visible_studies)),
    }
    with engine.connect() as connection:
        return {
            name: int(connection.execute(statement).scalar_one())
            for name, statement in statements.items()
        }


# -- grants ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """One row of ``access_grants``: a subject may see one study (until it expires)."""

    pk: int
    subject: str
    study_instance_uid: str
    kind: str
    reason: str
    granted_by: str
    created_at: float
    expires_at: float | None
    revoked_at: float | None

    def active(self, now: float | None = None) -> bool:
        moment = time.time() if now is None else now
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > moment)

    def as_json(self) -> dict[str, Any]:
        return {
            "id": self.pk,
            "subject": self.subject,
            "studyInstanceUID": self.study_instance_uid,
            "kind": self.kind,
            "reason": self.reason,
            "grantedBy": self.granted_by,
            "createdAt": self.created_at,
            "expiresAt": self.expires_at,
            "revokedAt": self.revoked_at,
            "active": self.active(),
        }


def _grant(row: Any) -> Grant:
    return Grant(
        int(row.pk),
        row.subject,
        row.study_instance_uid,
        row.kind,
        row.reason,
        row.granted_by,
        float(row.created_at),
        None if row.expires_at is None else float(row.expires_at),
        None if row.revoked_at is None else float(row.revoked_at),
    )


def add_grant(
    engine: Engine,
    *,
    subject: str,
    study_uid: str,
    kind: str = GRANT,
    reason: str = "",
    granted_by: str = "",
    expires_at: float | None = None,
    now: float | None = None,
) -> Grant:
    """Record a grant; returns it with its id."""
    if kind not in KINDS:
        raise ValueError(f"grant kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not subject or not study_uid:
        raise ValueError("a grant needs a subject and a Study Instance UID")
    created = time.time() if now is None else now
    values = {
        "subject": subject,
        "study_instance_uid": study_uid,
        "kind": kind,
        "reason": reason,
        "granted_by": granted_by,
        "created_at": created,
        "expires_at": expires_at,
        "revoked_at": None,
    }
    with engine.begin() as connection:
        pk = connection.execute(access_grants.insert().values(**values)).inserted_primary_key
    assert pk is not None
    return Grant(
        int(pk[0]), subject, study_uid, kind, reason, granted_by, created, expires_at, None
    )


def break_glass(
    engine: Engine,
    *,
    subject: str,
    study_uid: str,
    reason: str,
    hours: float,
    now: float | None = None,
) -> Grant:
    """A temporary grant the principal gives itself in an emergency, with its reason
    (``security.break_glass_hours`` long)."""
    if not reason.strip():
        raise ValueError("break-the-glass needs a reason")
    created = time.time() if now is None else now
    return add_grant(
        engine,
        subject=subject,
        study_uid=study_uid,
        kind=BREAK_GLASS,
        reason=reason.strip(),
        granted_by=subject,
        expires_at=created + hours * 3600.0,
        now=created,
    )


def revoke_grant(engine: Engine, pk: int, now: float | None = None) -> Grant | None:
    """Revoke one grant (kept, with its revocation time, for the record). None: no
    such grant; revoking twice keeps the first time."""
    moment = time.time() if now is None else now
    with engine.begin() as connection:
        connection.execute(
            update(access_grants)
            .where(access_grants.c.pk == pk, access_grants.c.revoked_at.is_(None))
            .values(revoked_at=moment)
        )
        row = connection.execute(select(access_grants).where(access_grants.c.pk == pk)).first()
    return None if row is None else _grant(row)


def get_grant(engine: Engine, pk: int) -> Grant | None:
    with engine.connect() as connection:
        row = connection.execute(select(access_grants).where(access_grants.c.pk == pk)).first()
    return None if row is None else _grant(row)


def list_grants(
    engine: Engine,
    *,
    subject: str | None = None,
    study_uid: str | None = None,
    active_only: bool = True,
    now: float | None = None,
    limit: int = 1000,
    offset: int = 0,
) -> list[Grant]:
    """Grants, newest first; by default only those in force."""
    statement = select(access_grants)
    if subject:
        statement = statement.where(access_grants.c.subject == subject)
    if study_uid:
        statement = statement.where(access_grants.c.study_instance_uid == study_uid)
    if active_only:
        moment = time.time() if now is None else now
        statement = statement.where(
            and_(
                access_grants.c.revoked_at.is_(None),
                or_(access_grants.c.expires_at.is_(None), access_grants.c.expires_at > moment),
            )
        )
    statement = (
        statement.order_by(access_grants.c.created_at.desc(), access_grants.c.pk.desc())
        .limit(limit)
        .offset(offset)
    )
    with engine.connect() as connection:
        return [_grant(row) for row in connection.execute(statement)]

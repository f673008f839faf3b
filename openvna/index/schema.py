"""Index tables (SQLAlchemy Core), portable across SQLite and PostgreSQL.

One table per level of the DICOM information model (PS3.4 C.6). Each carries the
attributes that C-FIND and QIDO-RS match on (PS3.4 C.6.1.1 / C.6.2.1 and PS3.18
Table 10.6.1-5); person names also get an upper-cased copy (``*_norm``) for the
case-insensitive PN matching that PS3.4 C.2.2.2.1 permits. Every instance row keeps its
DICOM JSON header (bulk data left out, PS3.18 F.2) so metadata requests never open a
pixel file (ARCHITECTURE.md property 5).
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

UID = String(64)
PN = String(324)  # 5 components x 64 chars x 3 groups (PS3.5 6.2) and separators
LO = String(64)
SH = String(16)
CS = String(16)
DA = String(8)
TM = String(16)

patients = Table(
    "patients",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_id", LO, nullable=False, default=""),
    Column("issuer_of_patient_id", LO, nullable=False, default=""),
    Column("patient_name", PN, nullable=False, default=""),
    Column("patient_name_norm", PN, nullable=False, default=""),
    Column("patient_birth_date", DA, nullable=False, default=""),
    Column("patient_sex", CS, nullable=False, default=""),
    Column("number_of_studies", Integer, nullable=False, default=0),
    UniqueConstraint("patient_id", "issuer_of_patient_id", name="uq_patients_identity"),
)
Index("ix_patients_name_norm", patients.c.patient_name_norm)

studies = Table(
    "studies",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("patient_pk", Integer, ForeignKey("patients.pk", ondelete="CASCADE"), nullable=False),
    Column("study_instance_uid", UID, nullable=False, unique=True),
    Column("study_date", DA, nullable=False, default=""),
    Column("study_time", TM, nullable=False, default=""),
    Column("accession_number", SH, nullable=False, default=""),
    Column("study_id", SH, nullable=False, default=""),
    Column("study_description", LO, nullable=False, default=""),
    Column("referring_physician_name", PN, nullable=False, default=""),
    Column("referring_physician_name_norm", PN, nullable=False, default=""),
    Column("modalities_in_study", String(256), nullable=False, default=""),
    Column("sop_classes_in_study", Text, nullable=False, default=""),
    Column("number_of_series", Integer, nullable=False, default=0),
    Column("number_of_instances", Integer, nullable=False, default=0),
    Column("size_bytes", BigInteger, nullable=False, default=0),
    Column("first_received_at", Float, nullable=False),
    Column("last_received_at", Float, nullable=False),
    Column("stable", Boolean, nullable=False, default=False),
)
Index("ix_studies_patient_pk", studies.c.patient_pk)
Index("ix_studies_study_date", studies.c.study_date)
Index("ix_studies_accession_number", studies.c.accession_number)
Index("ix_studies_unstable", studies.c.stable, studies.c.last_received_at)

series = Table(
    "series",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("study_pk", Integer, ForeignKey("studies.pk", ondelete="CASCADE"), nullable=False),
    Column("series_instance_uid", UID, nullable=False, unique=True),
    Column("modality", CS, nullable=False, default=""),
    Column("series_number", Integer, nullable=True),
    Column("series_description", LO, nullable=False, default=""),
    Column("body_part_examined", CS, nullable=False, default=""),
    Column("series_date", DA, nullable=False, default=""),
    Column("series_time", TM, nullable=False, default=""),
    Column("performed_procedure_step_start_date", DA, nullable=False, default=""),
    Column("performed_procedure_step_start_time", TM, nullable=False, default=""),
    Column("scheduled_procedure_step_id", SH, nullable=False, default=""),
    Column("requested_procedure_id", SH, nullable=False, default=""),
    Column("institution_name", LO, nullable=False, default=""),
    Column("station_name", SH, nullable=False, default=""),
    Column("number_of_instances", Integer, nullable=False, default=0),
)
Index("ix_series_study_pk", series.c.study_pk)
Index("ix_series_modality", series.c.modality)

instances = Table(
    "instances",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("series_pk", Integer, ForeignKey("series.pk", ondelete="CASCADE"), nullable=False),
    Column("sop_instance_uid", UID, nullable=False),
    Column("version", Integer, nullable=False, default=1),
    Column("is_latest", Boolean, nullable=False, default=True),
    Column("sop_class_uid", UID, nullable=False),
    Column("instance_number", Integer, nullable=True),
    Column("transfer_syntax_uid", UID, nullable=False),
    Column("rows", Integer, nullable=True),
    Column("columns", Integer, nullable=True),
    Column("number_of_frames", Integer, nullable=True),
    Column("bits_allocated", Integer, nullable=True),
    Column("content_date", DA, nullable=False, default=""),
    Column("content_time", TM, nullable=False, default=""),
    Column("storage_key", String(128), nullable=False, unique=True),
    Column("size_bytes", BigInteger, nullable=False),
    Column("sha256", String(64), nullable=False),
    Column("received_at", Float, nullable=False),
    Column("calling_aet", String(16), nullable=False, default=""),
    Column("dicom_json", Text, nullable=False),
    # Where the Pixel Data value starts in the stored file and its length (0xFFFFFFFF
    # when encapsulated): WADO-RS frames and bulk data read it without parsing the file.
    Column("pixel_data_offset", BigInteger, nullable=True),
    Column("pixel_data_length", BigInteger, nullable=True),
    UniqueConstraint("sop_instance_uid", "version", name="uq_instances_uid_version"),
)
Index("ix_instances_series_pk", instances.c.series_pk)
Index("ix_instances_sop_instance_uid", instances.c.sop_instance_uid)

archive_state = Table(
    "archive_state",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)

# -- AI orchestration (openvna/ai) ------------------------------------------------------

ai_jobs = Table(
    "ai_jobs",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("job_uid", UID, nullable=False, unique=True),  # also its UPS workitem UID
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("study_instance_uid", UID, nullable=False),
    Column("series_instance_uid", UID, nullable=False),
    # scheduled, running, completed, failed, cancelled
    Column("state", String(16), nullable=False),
    Column("trigger", String(16), nullable=False),  # rule, api, cli, ups
    Column("requested_by", String(128), nullable=False, default=""),
    Column("priority", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("max_attempts", Integer, nullable=False, default=1),
    Column("next_attempt_at", Float, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("worker", String(128), nullable=False, default=""),
    Column("error", Text, nullable=False, default=""),
    Column("progress", Integer, nullable=False, default=0),
)
Index("ix_ai_jobs_due", ai_jobs.c.state, ai_jobs.c.next_attempt_at)
Index("ix_ai_jobs_series", ai_jobs.c.series_instance_uid, ai_jobs.c.model_name)
Index("ix_ai_jobs_study", ai_jobs.c.study_instance_uid)

ai_runs = Table(
    "ai_runs",
    metadata,
    # Provenance of one attempt of one job (EU AI Act Art. 12 record keeping).
    Column("pk", Integer, primary_key=True),
    Column("job_pk", Integer, ForeignKey("ai_jobs.pk", ondelete="CASCADE"), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("model_name", String(64), nullable=False),
    Column("model_version", String(64), nullable=False),
    Column("artifact_sha256", String(64), nullable=False, default=""),
    Column("runtime", String(16), nullable=False),
    Column("trigger", String(16), nullable=False),
    Column("requested_by", String(128), nullable=False, default=""),
    Column("host", String(255), nullable=False, default=""),
    Column("pid", Integer, nullable=False, default=0),
    Column("study_instance_uid", UID, nullable=False),
    Column("series_instance_uid", UID, nullable=False),
    Column("inputs_json", Text, nullable=False, default="[]"),  # [{uid, sha256}]
    Column("parameters_json", Text, nullable=False, default="{}"),
    Column("outputs_json", Text, nullable=False, default="[]"),  # [{uid, class, kind}]
    Column("result_json", Text, nullable=False, default="{}"),  # findings, measurements
    Column("status", String(16), nullable=False),  # running, completed, failed, cancelled
    Column("error", Text, nullable=False, default=""),
    Column("started_at", Float, nullable=False),
    Column("model_seconds", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
)
Index("ix_ai_runs_job_pk", ai_runs.c.job_pk)
Index("ix_ai_runs_started_at", ai_runs.c.started_at)
Index("ix_ai_runs_study", ai_runs.c.study_instance_uid)

ai_outputs = Table(
    "ai_outputs",
    metadata,
    # Every instance an AI run stored, and whether a human rejected it.
    Column("pk", Integer, primary_key=True),
    Column("run_pk", Integer, ForeignKey("ai_runs.pk", ondelete="CASCADE"), nullable=False),
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("sop_class_uid", UID, nullable=False),
    Column("series_instance_uid", UID, nullable=False),
    Column("study_instance_uid", UID, nullable=False),
    Column("kind", String(16), nullable=False),  # sr, seg, sc, pmap
    Column("rejected_at", Float, nullable=True),
    Column("rejected_by", String(128), nullable=False, default=""),
    Column("rejection_reason", Text, nullable=False, default=""),
)
Index("ix_ai_outputs_series", ai_outputs.c.series_instance_uid)
Index("ix_ai_outputs_study", ai_outputs.c.study_instance_uid)

ai_model_state = Table(
    "ai_model_state",
    metadata,
    # The stop switch: name '*' is the global switch.
    Column("model_name", String(64), primary_key=True),
    Column("enabled", Boolean, nullable=False),
    Column("changed_at", Float, nullable=False),
    Column("changed_by", String(128), nullable=False, default=""),
    Column("reason", Text, nullable=False, default=""),
)

# -- UPS-RS workitems (PS3.4 Annex CC, PS3.18 11) --------------------------------------

ups_workitems = Table(
    "ups_workitems",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("sop_instance_uid", UID, nullable=False, unique=True),
    Column("state", String(16), nullable=False),  # SCHEDULED, IN PROGRESS, CANCELED, COMPLETED
    Column("transaction_uid", UID, nullable=True),
    Column("dataset_json", Text, nullable=False),
    Column("priority", String(8), nullable=False, default="MEDIUM"),
    Column("scheduled_start", String(26), nullable=False, default=""),
    Column("worklist_label", LO, nullable=False, default=""),
    Column("patient_id", LO, nullable=False, default=""),
    Column("study_instance_uid", UID, nullable=False, default=""),
    Column("job_pk", Integer, ForeignKey("ai_jobs.pk", ondelete="SET NULL"), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("ix_ups_workitems_state", ups_workitems.c.state)
Index("ix_ups_workitems_job_pk", ups_workitems.c.job_pk)

ups_subscriptions = Table(
    "ups_subscriptions",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("subscriber_aet", String(16), nullable=False),
    # a workitem UID, or the Global Subscription Instance UID 1.2.840.10008.5.1.4.34.5
    # (1.2.840.10008.5.1.4.34.5.1 for a filtered global subscription)
    Column("workitem_uid", UID, nullable=False),
    Column("deletion_lock", Boolean, nullable=False, default=False),
    Column("filter_json", Text, nullable=False, default=""),
    Column("suspended", Boolean, nullable=False, default=False),
    Column("created_at", Float, nullable=False),
    UniqueConstraint("subscriber_aet", "workitem_uid", name="uq_ups_subscriptions_aet_item"),
)

ups_events = Table(
    "ups_events",
    metadata,
    # Event reports to deliver (PS3.4 CC.2.4); every HTTP process polls this log, so a
    # subscriber's WebSocket gets events whichever process (or node) changed the item.
    Column("pk", Integer, primary_key=True),
    Column("workitem_uid", UID, nullable=False),
    Column("event_type_id", Integer, nullable=False),
    Column("event_json", Text, nullable=False),
    # NULL: for every subscriber of the workitem; an AE title: only for that subscriber
    # (the initial State Report that a new subscription gets, PS3.4 CC.2.3.2).
    Column("subscriber_aet", String(16), nullable=True),
    Column("created_at", Float, nullable=False),
)
Index("ix_ups_events_created_at", ups_events.c.created_at)

# -- Security (openvna/security) ---------------------------------------------------------

users = Table(
    "users",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("username", String(128), nullable=False, unique=True),
    Column("display_name", String(255), nullable=False, default=""),
    Column("password_hash", Text, nullable=False),  # argon2id, PHC string
    Column("roles", String(255), nullable=False),  # comma-separated Role values
    Column("totp_secret", String(64), nullable=True),  # base32; NULL: not enrolled
    Column("totp_confirmed", Boolean, nullable=False, default=False),
    Column("totp_last_step", BigInteger, nullable=True),  # replay protection (RFC 6238 5.2)
    Column("institutions", Text, nullable=False, default=""),  # study-level restriction
    Column("issuers_of_patient_id", Text, nullable=False, default=""),
    Column("disabled", Boolean, nullable=False, default=False),
    Column("failed_logins", Integer, nullable=False, default=0),
    Column("locked_until", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("key_id", String(32), nullable=False, unique=True),  # public part of the token
    Column("secret_hash", String(128), nullable=False),  # SHA-256 of the secret part
    Column("name", String(128), nullable=False),
    Column("roles", String(255), nullable=False),
    Column("scopes", Text, nullable=False, default=""),  # permissions it is limited to
    Column("owner", String(128), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
)

sessions = Table(
    "sessions",
    metadata,
    Column("pk", Integer, primary_key=True),
    Column("token_hash", String(128), nullable=False, unique=True),
    Column("user_pk", Integer, ForeignKey("users.pk", ondelete="CASCADE"), nullable=False),
    Column("created_at", Float, nullable=False),
    Column("last_seen_at", Float, nullable=False),
    Column("expires_at", Float, nullable=False),
    Column("address", String(64), nullable=False, default=""),
    Column("mfa", Boolean, nullable=False, default=False),
)
Index("ix_sessions_user_pk", sessions.c.user_pk)

access_grants = Table(
    "access_grants",
    metadata,
    # A principal may see one study: an explicit grant, or break-the-glass with a reason.
    Column("pk", Integer, primary_key=True),
    Column("subject", String(255), nullable=False),  # Principal.subject
    Column("study_instance_uid", UID, nullable=False),
    Column("kind", String(16), nullable=False),  # grant, break-glass
    Column("reason", Text, nullable=False, default=""),
    Column("granted_by", String(255), nullable=False, default=""),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
)
Index("ix_access_grants_subject", access_grants.c.subject, access_grants.c.study_instance_uid)

audit_log = Table(
    "audit_log",
    metadata,
    # Append-only hash chain of DICOM PS3.15 A.5 audit messages: each record's hash
    # covers the previous one, so an edit or a deletion breaks every later link.
    Column("seq", BigInteger().with_variant(Integer, "sqlite"), primary_key=True),
    Column("recorded_at", Float, nullable=False),
    Column("event_id", String(16), nullable=False),  # DCM code, e.g. 110112
    Column("event_action", String(1), nullable=False),  # C R U D E
    Column("outcome", Integer, nullable=False),  # 0 4 8 12
    Column("user_id", String(255), nullable=False, default=""),
    Column("address", String(64), nullable=False, default=""),
    Column("study_uids", Text, nullable=False, default=""),  # space-separated, for search
    Column("message", Text, nullable=False),  # the XML audit message
    Column("prev_hash", String(64), nullable=False),
    Column("hash", String(64), nullable=False),
)
Index("ix_audit_log_recorded_at", audit_log.c.recorded_at)
Index("ix_audit_log_event_id", audit_log.c.event_id)

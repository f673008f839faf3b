"""ai jobs, provenance, stop switch and UPS workitems

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23 13:01:31.258156
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "ai_jobs",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("job_uid", sa.String(length=64), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("max_attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.Column("worker", sa.String(length=128), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ai_jobs")),
        sa.UniqueConstraint("job_uid", name=op.f("uq_ai_jobs_job_uid")),
    )
    with op.batch_alter_table("ai_jobs", schema=None) as batch_op:
        batch_op.create_index("ix_ai_jobs_due", ["state", "next_attempt_at"], unique=False)
        batch_op.create_index(
            "ix_ai_jobs_series", ["series_instance_uid", "model_name"], unique=False
        )
        batch_op.create_index("ix_ai_jobs_study", ["study_instance_uid"], unique=False)

    op.create_table(
        "ai_model_state",
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("enabled", sa.Boolean(), nullable=False),
        sa.Column("changed_at", sa.Float(), nullable=False),
        sa.Column("changed_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("model_name", name=op.f("pk_ai_model_state")),
    )
    op.create_table(
        "ups_events",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("workitem_uid", sa.String(length=64), nullable=False),
        sa.Column("event_type_id", sa.Integer(), nullable=False),
        sa.Column("event_json", sa.Text(), nullable=False),
        sa.Column("subscriber_aet", sa.String(length=16), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ups_events")),
    )
    with op.batch_alter_table("ups_events", schema=None) as batch_op:
        batch_op.create_index("ix_ups_events_created_at", ["created_at"], unique=False)

    op.create_table(
        "ups_subscriptions",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("subscriber_aet", sa.String(length=16), nullable=False),
        sa.Column("workitem_uid", sa.String(length=64), nullable=False),
        sa.Column("deletion_lock", sa.Boolean(), nullable=False),
        sa.Column("filter_json", sa.Text(), nullable=False),
        sa.Column("suspended", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ups_subscriptions")),
        sa.UniqueConstraint("subscriber_aet", "workitem_uid", name="uq_ups_subscriptions_aet_item"),
    )
    op.create_table(
        "ai_runs",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("job_pk", sa.Integer(), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("model_name", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("artifact_sha256", sa.String(length=64), nullable=False),
        sa.Column("runtime", sa.String(length=16), nullable=False),
        sa.Column("trigger", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=128), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("inputs_json", sa.Text(), nullable=False),
        sa.Column("parameters_json", sa.Text(), nullable=False),
        sa.Column("outputs_json", sa.Text(), nullable=False),
        sa.Column("result_json", sa.Text(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("started_at", sa.Float(), nullable=False),
        sa.Column("model_seconds", sa.Float(), nullable=True),
        sa.Column("finished_at", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_pk"], ["ai_jobs.pk"], name=op.f("fk_ai_runs_job_pk_ai_jobs"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ai_runs")),
    )
    with op.batch_alter_table("ai_runs", schema=None) as batch_op:
        batch_op.create_index("ix_ai_runs_job_pk", ["job_pk"], unique=False)
        batch_op.create_index("ix_ai_runs_started_at", ["started_at"], unique=False)
        batch_op.create_index("ix_ai_runs_study", ["study_instance_uid"], unique=False)

    op.create_table(
        "ups_workitems",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("transaction_uid", sa.String(length=64), nullable=True),
        sa.Column("dataset_json", sa.Text(), nullable=False),
        sa.Column("priority", sa.String(length=8), nullable=False),
        sa.Column("scheduled_start", sa.String(length=26), nullable=False),
        sa.Column("worklist_label", sa.String(length=64), nullable=False),
        sa.Column("patient_id", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("job_pk", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_pk"],
            ["ai_jobs.pk"],
            name=op.f("fk_ups_workitems_job_pk_ai_jobs"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ups_workitems")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_ups_workitems_sop_instance_uid")),
    )
    with op.batch_alter_table("ups_workitems", schema=None) as batch_op:
        batch_op.create_index("ix_ups_workitems_job_pk", ["job_pk"], unique=False)
        batch_op.create_index("ix_ups_workitems_state", ["state"], unique=False)

    op.create_table(
        "ai_outputs",
        sa.Column("pk", sa.Integer(), nullable=False),
        sa.Column("run_pk", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("sop_class_uid", sa.String(length=64), nullable=False),
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("rejected_at", sa.Float(), nullable=True),
        sa.Column("rejected_by", sa.String(length=128), nullable=False),
        sa.Column("rejection_reason", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["run_pk"],
            ["ai_runs.pk"],
            name=op.f("fk_ai_outputs_run_pk_ai_runs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("pk", name=op.f("pk_ai_outputs")),
        sa.UniqueConstraint("sop_instance_uid", name=op.f("uq_ai_outputs_sop_instance_uid")),
    )
    with op.batch_alter_table("ai_outputs", schema=None) as batch_op:
        batch_op.create_index("ix_ai_outputs_series", ["series_instance_uid"], unique=False)
        batch_op.create_index("ix_ai_outputs_study", ["study_instance_uid"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("ai_outputs", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_outputs_study")
        batch_op.drop_index("ix_ai_outputs_series")

    op.drop_table("ai_outputs")
    with op.batch_alter_table("ups_workitems", schema=None) as batch_op:
        batch_op.drop_index("ix_ups_workitems_state")
        batch_op.drop_index("ix_ups_workitems_job_pk")

    op.drop_table("ups_workitems")
    with op.batch_alter_table("ai_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_runs_study")
        batch_op.drop_index("ix_ai_runs_started_at")
        batch_op.drop_index("ix_ai_runs_job_pk")

    op.drop_table("ai_runs")
    op.drop_table("ups_subscriptions")
    with op.batch_alter_table("ups_events", schema=None) as batch_op:
        batch_op.drop_index("ix_ups_events_created_at")

    op.drop_table("ups_events")
    op.drop_table("ai_model_state")
    with op.batch_alter_table("ai_jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_ai_jobs_study")
        batch_op.drop_index("ix_ai_jobs_series")
        batch_op.drop_index("ix_ai_jobs_due")

    op.drop_table("ai_jobs")

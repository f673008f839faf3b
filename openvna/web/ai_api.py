"""REST API of AI orchestration under ``/api/ai``: models and their stop switches, jobs
(list, run on demand, cancel), provenance runs, results (with FHIR) and rejection.

Thin like every adapter: it parses the request, calls the :class:`Orchestrator` or the
AI repository in a thread, and formats JSON. Who did something (``by``) is the
authenticated principal; with authentication off (the local principal) it comes from
the request body, as before.

The route table (:mod:`openvna.security.routes`) checks the permission and a ``study``
query parameter; jobs, runs and results named by their own id are checked here against
their study, answering 404 as for an unknown id when the study is hidden. A principal
restricted to some studies lists jobs, runs and results one study at a time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from openvna.ai.errors import ManifestError
from openvna.ai.jobs import Orchestrator
from openvna.ai.registry import load_registry
from openvna.archive.service import Archive
from openvna.errors import BadRequestError, NotFoundError
from openvna.index.access_repository import study_of_ai_output
from openvna.security.errors import Forbidden
from openvna.security.permissions import Permission
from openvna.security.principal import PrincipalKind
from openvna.web.access import http_exception, request_principal, require_study, visible_study


def routes(archive: Archive) -> list[BaseRoute]:
    state: dict[str, Orchestrator] = {}

    def orchestrator() -> Orchestrator:
        if "o" not in state:  # built on first use: the models folder is read then
            state["o"] = Orchestrator(
                archive.settings, archive.engine, load_registry(archive.settings)
            )
        return state["o"]

    async def call(function: Callable[[], Any]) -> Any:
        try:
            return await run_in_threadpool(function)
        except ManifestError as error:
            raise BadRequestError(str(error)) from error

    def actor(request: Request, data: dict[str, Any], default: str = "api") -> str:
        """Who acts: the authenticated principal, or (authentication off) ``by``."""
        principal = request_principal(request)
        if principal.kind is not PrincipalKind.LOCAL:
            return principal.subject
        return str(data.get("by", default)).strip()

    def require_study_filter(request: Request) -> None:
        """A restricted principal names the study it lists (checked by the route table)."""
        if request.query_params.get("study"):
            return
        principal = request_principal(request)
        if archive.security.authorizer.study_access(principal) is not None:
            raise http_exception(
                Forbidden("a principal restricted to some studies lists by study (study=)")
            )

    async def hidden(request: Request, study_uid: str | None) -> bool:
        return study_uid is None or not await visible_study(request, archive, study_uid)

    async def body(request: Request) -> dict[str, Any]:
        if not await request.body():
            return {}
        try:
            value = await request.json()
        except ValueError as error:
            raise BadRequestError(f"request body is not JSON: {error}") from error
        if not isinstance(value, dict):
            raise BadRequestError("request body must be a JSON object")
        return value

    async def list_models(request: Request) -> Response:
        """Installed models with their manifests and stop-switch state."""
        statuses = await call(lambda: orchestrator().status())
        enabled = await call(lambda: orchestrator().global_enabled())
        worker = await call(lambda: orchestrator().worker_status())
        return JSONResponse(
            {
                "aiEnabled": enabled and archive.settings.ai.enabled,
                "worker": worker,
                "problems": orchestrator().registry.problems,
                "models": [
                    {
                        "name": status.manifest.name,
                        "version": status.manifest.version,
                        "description": status.manifest.description,
                        "intendedUse": status.manifest.intended_use,
                        "runtime": status.manifest.runtime.kind.value,
                        "enabled": status.enabled,
                        "stoppedBy": status.stopped_by,
                        "stopReason": status.stop_reason,
                        "input": status.manifest.input.model_dump(mode="json"),
                        "outputs": status.manifest.outputs.model_dump(mode="json"),
                        "resources": status.manifest.resources.model_dump(mode="json"),
                    }
                    for status in statuses
                ],
            }
        )

    async def stop(request: Request) -> Response:
        """The stop switch: ``/api/ai/stop`` for all AI, ``/api/ai/models/{name}/stop``."""
        data = await body(request)
        name = request.path_params.get("name")
        by = actor(request, data)
        cancelled = await call(
            lambda: orchestrator().stop(name, by=by, reason=str(data.get("reason", "")))
        )
        return JSONResponse(
            {"stopped": name or "*", "cancelledJobs": [j.job_uid for j in cancelled]}
        )

    async def start(request: Request) -> Response:
        data = await body(request)
        name = request.path_params.get("name")
        by = actor(request, data)
        await call(lambda: orchestrator().start(name, by=by, reason=str(data.get("reason", ""))))
        return JSONResponse({"started": name or "*"})

    async def list_jobs(request: Request) -> Response:
        """Jobs, newest first; filters ``state`` (comma list), ``model``, ``study``."""
        params = request.query_params
        require_study_filter(request)
        states = [s for s in params.get("state", "").split(",") if s]
        limit, offset = _paging(params.get("limit"), params.get("offset"))
        jobs = await call(
            lambda: orchestrator().repository.jobs(
                states=states,
                model_name=params.get("model"),
                study_uid=params.get("study"),
                limit=limit,
                offset=offset,
            )
        )
        return JSONResponse([job.as_json() for job in jobs])

    async def create_jobs(request: Request) -> Response:
        """Run models on demand: ``{"study": uid, "series": uid?, "models": [..]?}``."""
        data = await body(request)
        study = data.get("study") or data.get("studyInstanceUID")
        if not isinstance(study, str) or not study:
            raise BadRequestError("'study' (a Study Instance UID) is required")
        await require_study(request, archive, Permission.AI_RUN, study)
        series = data.get("series") or data.get("seriesInstanceUID")
        models = data.get("models") or ([data["model"]] if data.get("model") else [])
        if not isinstance(models, list) or not all(isinstance(name, str) for name in models):
            raise BadRequestError("'models' must be a list of model names ('model': one name)")
        priority = data.get("priority", 1)
        if not isinstance(priority, int) or isinstance(priority, bool) or abs(priority) > 2**31:
            raise BadRequestError("'priority' must be an integer")
        requested_by = actor(request, data)
        jobs = await call(
            lambda: orchestrator().schedule(
                study,
                trigger="api",
                requested_by=requested_by,
                series_uid=series if isinstance(series, str) else None,
                model_names=[str(name) for name in models],
                priority=priority,
            )
        )
        return JSONResponse([job.as_json() for job in jobs], status_code=201)

    async def get_job(request: Request) -> Response:
        uid = request.path_params["uid"]
        job = await call(lambda: orchestrator().repository.job(job_uid=uid))
        if job is None or await hidden(request, job.study_instance_uid):
            raise NotFoundError(f"no AI job {uid}")
        runs = await call(lambda: orchestrator().repository.runs(job_uid=uid))
        return JSONResponse({**job.as_json(), "runs": runs})

    async def cancel_job(request: Request) -> Response:
        data = await body(request)
        uid = request.path_params["uid"]
        found = await call(lambda: orchestrator().repository.job(job_uid=uid))
        if found is None or await hidden(request, found.study_instance_uid):
            raise NotFoundError(f"no AI job {uid}")
        by = actor(request, data)
        job = await call(
            lambda: orchestrator().cancel(uid, by=by, reason=str(data.get("reason", "")))
        )
        return JSONResponse(job.as_json())

    async def list_runs(request: Request) -> Response:
        """Provenance records; filters ``model``, ``study``, ``job``, ``since`` (epoch s)."""
        params = request.query_params
        require_study_filter(request)
        limit, offset = _paging(params.get("limit"), params.get("offset"))
        since = params.get("since")
        try:
            since_value = float(since) if since else None
        except ValueError as error:
            raise BadRequestError("'since' is seconds since the epoch") from error
        runs = await call(
            lambda: orchestrator().repository.runs(
                model_name=params.get("model"),
                study_uid=params.get("study"),
                job_uid=params.get("job"),
                since=since_value,
                limit=limit,
                offset=offset,
            )
        )
        for run in runs:
            run["result"].pop("fhir", None)
        return JSONResponse(runs)

    async def get_run(request: Request) -> Response:
        run = await call(lambda: orchestrator().repository.run(_run_pk(request)))
        if run is None or await hidden(request, run.get("studyInstanceUID")):
            raise NotFoundError("no such AI run")
        run["result"].pop("fhir", None)
        return JSONResponse(run)

    async def run_fhir(request: Request) -> Response:
        """The run's results as a FHIR R4 Bundle (DiagnosticReport + Observations)."""
        run = await call(lambda: orchestrator().repository.run(_run_pk(request)))
        if run is not None and await hidden(request, run.get("studyInstanceUID")):
            run = None
        if run is None or "fhir" not in run["result"]:
            raise NotFoundError("no FHIR report for this AI run (not completed?)")
        return JSONResponse(run["result"]["fhir"], media_type="application/fhir+json")

    async def list_results(request: Request) -> Response:
        """AI output instances, with whether a human rejected them; filter ``study``."""
        study = request.query_params.get("study")
        require_study_filter(request)
        outputs = await call(lambda: orchestrator().repository.outputs(study_uid=study))
        return JSONResponse(outputs)

    async def reject(request: Request) -> Response:
        """Mark an AI output rejected by a human: ``{"by": .., "reason": ..}``."""
        data = await body(request)
        uid = request.path_params["uid"]
        by = actor(request, data, default="")
        if not by:
            raise BadRequestError("'by' (who rejects the result) is required")
        study = await call(lambda: study_of_ai_output(archive.engine, uid))
        if study is not None and await hidden(request, study):
            raise NotFoundError(f"{uid} is not an AI output")
        await call(lambda: orchestrator().reject(uid, by=by, reason=str(data.get("reason", ""))))
        return JSONResponse({"rejected": uid, "by": by})

    return [
        Route("/ai/models", list_models, methods=["GET"]),
        Route("/ai/stop", stop, methods=["POST"], name="stop_all"),
        Route("/ai/start", start, methods=["POST"], name="start_all"),
        Route("/ai/models/{name}/stop", stop, methods=["POST"], name="stop_model"),
        Route("/ai/models/{name}/start", start, methods=["POST"], name="start_model"),
        Route("/ai/jobs", list_jobs, methods=["GET"]),
        Route("/ai/jobs", create_jobs, methods=["POST"]),
        Route("/ai/jobs/{uid}", get_job, methods=["GET"]),
        Route("/ai/jobs/{uid}/cancel", cancel_job, methods=["POST"]),
        Route("/ai/runs", list_runs, methods=["GET"]),
        Route("/ai/runs/{pk:int}", get_run, methods=["GET"]),
        Route("/ai/runs/{pk:int}/fhir", run_fhir, methods=["GET"]),
        Route("/ai/results", list_results, methods=["GET"]),
        Route("/ai/results/{uid}/reject", reject, methods=["POST"]),
    ]


_MAX_OFFSET = 2**62
"""Beyond any row count, within the 64-bit integers the index's SQL takes."""


def _paging(limit: str | None, offset: str | None) -> tuple[int, int]:
    try:
        return (min(max(int(limit or 100), 1), 1000), min(max(int(offset or 0), 0), _MAX_OFFSET))
    except ValueError as error:
        raise BadRequestError("limit and offset are integers") from error


def _run_pk(request: Request) -> int:
    """The ``{pk:int}`` of a run; one past the 64-bit range names no run (404)."""
    pk = int(request.path_params["pk"])
    if pk > _MAX_OFFSET:
        raise NotFoundError("no such AI run")
    return pk

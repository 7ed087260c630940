"""The HTTP API (FastAPI; OpenAPI docs at ``/docs``), served by ``anomaly-vae serve``.

Read: models, thresholds (in force and history), previews, anomalies, alerts, ``/health`` and
``/metrics`` (Prometheus text); ``POST /models/{name}/score`` scores records now under the
threshold in force (a registered version, loaded from its model directory; nothing stored).
Write (a new threshold version, acknowledging or resolving an alert): only with
``Authorization: Bearer <token>`` matching ``ANOMALY_VAE_API_TOKEN`` (compared in constant
time; never logged). Without a token configured the API is read-only and every write gets 403.

Nothing is built at import time: :class:`ApiSettings` is read once at start-up and
:func:`create_app` takes it, with an engine on a checked database.
"""

from __future__ import annotations

import dataclasses
import hmac
import json
import logging
import math
import re
import sys
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from sqlalchemy import func, select
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DataError, SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException

from anomaly_vae._version import __version__
from anomaly_vae.config import MAX_ALERT_RULE_RECORDS, AlertsConfig, NoBooleanNumbers
from anomaly_vae.errors import ConfigError, InputFileError, NotFoundError, SchemaError
from anomaly_vae.features import collect_unseen_values
from anomaly_vae.storage import outbox as alert_outbox
from anomaly_vae.storage import repository as repo
from anomaly_vae.storage.dead_letters import DeadLetterFilter, list_dead_letters, summarize
from anomaly_vae.storage.engine import DatabaseTarget
from anomaly_vae.storage.tables import ALERT_STATES, Alert, Model, ScoringRun, Threshold
from anomaly_vae.storage.tuning import (
    PolicySpec,
    ThresholdChange,
    ThresholdWrite,
    UtcDatetime,
    act_on_alert,
    alert_rule_of,
    list_alerts,
    model_in_use,
    preview_threshold,
    replay_limit,
    rollback_threshold,
    set_threshold,
)
from anomaly_vae.thresholds import AlertRule

logger = logging.getLogger(__name__)

TOKEN_ENV = "ANOMALY_VAE_API_TOKEN"
MIN_TOKEN_LENGTH = 16
_PLACEHOLDERS = {"changeme", "change-me", "changethis", "secret", "token", "password", "xxx"}
# A stream run's metrics older than this are not served as current (a scorer killed hard
# leaves its run 'running'); `runs list` calls such a run silent.
STALE_METRICS_S = repo.SILENT_STREAM_S
MAX_SCORE_RECORDS = 10_000  # per POST /models/{name}/score
MODEL_CACHE_SIZE = 4  # model versions kept loaded for scoring
MAX_ECHOED_INPUT = 200  # characters of a rejected input shown back in a 422
# A request body over this is refused (413) before it is read whole: 10,000 records to score
# of a few kilobytes each fit several times over.
MAX_BODY_BYTES = 32 * 2**20
# Stored scores one request may replay (a threshold preview needs no token): about 1 GiB of
# the server's memory at most; `serve --max-replay-scores` changes it.
DEFAULT_MAX_REPLAY_SCORES = 2_000_000
# Where /docs and /redoc load their scripts and styles from (served by this app).
DOCS_ASSETS_URL = "/docs-assets"


# ===================================================================== settings
@dataclass(frozen=True)
class ApiSettings:
    """What the API runs with, read once at start-up."""

    database: DatabaseTarget
    token: str | None
    # The most stored scores one request replays (a preview, a contamination threshold).
    max_replay_scores: int | None = DEFAULT_MAX_REPLAY_SCORES

    @property
    def read_only(self) -> bool:
        return self.token is None

    @classmethod
    def from_environment(cls, database: DatabaseTarget, environ: Mapping[str, str]) -> ApiSettings:
        """``ANOMALY_VAE_API_TOKEN`` (unset or empty: read-only). A short or placeholder token
        is refused: the server would take writes from anyone who guesses it."""
        token = (environ.get(TOKEN_ENV) or "").strip() or None
        if token is not None and (len(token) < MIN_TOKEN_LENGTH or token.lower() in _PLACEHOLDERS):
            raise ConfigError(
                f"{TOKEN_ENV} is too short or a placeholder: use at least {MIN_TOKEN_LENGTH} "
                "random characters (python -c 'import secrets; print(secrets.token_urlsafe(32))'"
                "), or unset it to serve read-only"
            )
        return cls(database=database, token=token)

    def __repr__(self) -> str:  # never show the token
        return f"ApiSettings(database={self.database.display!r}, read_only={self.read_only})"


# ====================================================================== schemas
class _Schema(NoBooleanNumbers):
    model_config = ConfigDict(extra="forbid")


class ModelPublic(BaseModel):
    name: str
    version: str
    score_kind: str
    scores: int
    path: str | None
    created_at: datetime | None
    registered_at: datetime


class ThresholdPublic(BaseModel):
    """One threshold version of a model name (the newest is in force)."""

    id: int = Field(
        description="The version's row id: what alerts' and runs' ``threshold_id`` name, and "
        "``before_id`` for the next page of the history"
    )
    model: str
    version: int
    policy: str
    warning: float
    critical: float | None
    alert_rule: AlertsConfig
    parameters: dict[str, Any]
    created_by: str
    reason: str
    created_at: datetime


class ThresholdWritten(ThresholdPublic):
    """The version in force after a change: a new one (201, ``created`` true), or, when the
    version in force already had the settings asked for (a request retried), that version
    unchanged (200, ``created`` false: no version was added)."""

    created: bool


# What a change answers when nothing changed (the 201 is documented by status_code).
_UNCHANGED: dict[int | str, dict[str, Any]] = {
    200: {
        "model": ThresholdWritten,
        "description": "Nothing changed: the version in force already has these settings "
        "(``created`` false; no version added), as when a request is retried",
    }
}


class ModelDetail(BaseModel):
    name: str
    versions: list[ModelPublic]
    # The version in use (scored last): the one policies, previews and scoring use.
    in_use: str
    threshold: ThresholdPublic | None
    warnings: list[str] = Field(
        default_factory=list,
        description="What an operator should know: the threshold in force set for another "
        "model version than the one in use (its scores have a scale of their own)",
    )


class ThresholdCreate(_Schema):
    """A new threshold version. ``critical``: left out, the one in force is kept; ``null``,
    there is none. ``alert_rule`` left out: the rule in force is kept."""

    warning: PolicySpec
    critical: PolicySpec | None = None
    alert_rule: AlertsConfig | None = None
    reason: str = Field(min_length=1, max_length=2000)
    created_by: str = Field(default="api", min_length=1, max_length=200)


class AlertRuleUpdate(_Schema):
    """Settings of the alert rule in force to change; those left out keep their value."""

    k: int | None = Field(default=None, ge=1, le=MAX_ALERT_RULE_RECORDS)
    n: int | None = Field(default=None, ge=1, le=MAX_ALERT_RULE_RECORDS)
    cooldown_s: float | None = Field(default=None, ge=0.0)
    resolve_after: int | None = Field(default=None, ge=1, le=MAX_ALERT_RULE_RECORDS)


class ThresholdUpdate(_Schema):
    """A new version that changes only what is given (at least one of warning, critical,
    alert_rule, and in alert_rule only the settings given); the rest is carried over from the
    version in force."""

    warning: PolicySpec | None = None
    critical: PolicySpec | None = None
    alert_rule: AlertRuleUpdate | None = None
    reason: str = Field(min_length=1, max_length=2000)
    created_by: str = Field(default="api", min_length=1, max_length=200)


class ThresholdRollback(_Schema):
    """Put an earlier threshold version back in force (as a new version, its levels and alert
    rule as they were)."""

    version: int = Field(ge=1)
    reason: str = Field(min_length=1, max_length=2000)
    created_by: str = Field(default="api", min_length=1, max_length=200)


class ThresholdPreviewRequest(_Schema):
    """What to replay on the stored scores: a policy (left out: the one in force), a critical
    level (as in ``ThresholdCreate``), changes to the alert rule in force (as in
    ``ThresholdUpdate``), and the period [since, until)."""

    warning: PolicySpec | None = None
    critical: PolicySpec | None = None
    alert_rule: AlertRuleUpdate | None = None
    since: UtcDatetime | None = None
    until: UtcDatetime | None = None


class Levels(BaseModel):
    warning: float
    critical: float | None
    alert_rule: AlertsConfig | None


class AtTheTime(BaseModel):
    flagged: int
    alerts: int


class ThresholdPreviewPublic(BaseModel):
    model: str
    model_version: str
    since: datetime | None
    until: datetime | None
    proposed: Levels
    current: Levels | None
    records: int
    flagged: int
    alerts: int
    escalations: int
    resolutions: int
    alerts_per_day: dict[str, int]
    alerts_per_entity: dict[str, int]
    at_the_time: AtTheTime


class AnomalyPublic(BaseModel):
    id: int = Field(description="The score row's id: ``before_id`` for the next page")
    time: datetime
    model: str
    model_version: str
    entity_key: str | None
    source_key: str
    score: float
    percentile: float
    severity: str | None
    top_features: list[Any] | None
    alert_state: str | None


class RunPublic(BaseModel):
    id: int
    kind: str
    status: str
    model: str
    model_version: str
    source: str
    started_at: datetime
    finished_at: datetime | None
    rows_read: int | None
    rows_scored: int
    rows_flagged: int
    rows_rejected: int
    rows_inserted: int
    rows_pruned: int = Field(description="Of rows_inserted, the score rows db prune deleted since")
    threshold_value: float
    threshold_id: int | None
    error: str | None = Field(description="Why a failed run stopped")
    lag: int | None = Field(description="A stream run's consumer lag, as last reported")
    latency_p50_ms: float | None
    latency_p99_ms: float | None
    records_per_s: float | None
    metrics_at: datetime | None = Field(description="When the stream run last reported")


class DeadLetterPublic(BaseModel):
    id: int
    rejected_at: datetime
    run_id: int
    run_kind: str
    model: str
    model_version: str
    source_key: str
    reason: str
    raw: str | None = Field(
        description="The record as received: the message or line text, or the JSON text of "
        "the row's values (Kafka messages over 10 kB are stored cut)"
    )


class DeadLetterReason(BaseModel):
    reason: str = Field(
        description="The reason with the record's own value and numbers masked (… and N)"
    )
    count: int
    example: str = Field(description="One full reason of the group")
    example_source_key: str
    first_rejected_at: datetime
    last_rejected_at: datetime
    runs: list[int]


# The dead-letter endpoints' filters (module level: their annotations are read by name).
# A time's UTC offset after a space: the '+' of "+02:00" that a URL's query decodes as a
# space (curl "...?since=2026-11-28T08:00:00+02:00", as typed, without %2B).
_SPACED_OFFSET = re.compile(
    r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}(?::\d{2}(?:\.\d+)?)?) (\d{2}(?::?\d{2})?)$"
)


def _plus_from_query(value: object) -> object:
    """``2026-11-28T08:00:00 02:00`` as ``...+02:00``: in a query string an unescaped '+' is
    a space, so a time typed with its offset into a URL came as a 422 quoting the input with
    a space where the user had written '+'."""
    if isinstance(value, str) and (match := _SPACED_OFFSET.match(value.strip())):
        return f"{match.group(1)}+{match.group(2)}"
    return value


UtcQueryDatetime = Annotated[UtcDatetime, BeforeValidator(_plus_from_query)]
"""A time in a query parameter: ``UtcDatetime``, a '+' of its offset decoded as a space read
as the '+' it was."""

_DL_SINCE = Query(description="Rejected at or after this (ISO 8601; without a time zone: UTC)")
_DL_UNTIL = Query(description="Rejected before this (ISO 8601; without a time zone: UTC)")
_DL_REASON = Query(description="Only reasons containing this text (letter case ignored)")


class AlertPublic(BaseModel):
    id: int
    model: str
    model_version: str
    entity_key: str | None
    state: str
    severity: str
    time: datetime
    score: float
    source_key: str
    opened_at: datetime
    acknowledged_at: datetime | None
    acknowledged_by: str | None
    resolved_at: datetime | None
    resolved_by: str | None
    escalated_at: datetime | None
    threshold_id: int | None
    rule: dict[str, Any] | None
    note: str | None
    # When the anomaly began: the time of the first record that crossed among those that
    # opened the alert (``time`` is the record that completed the rule); None for alerts
    # opened before the database recorded it.
    onset_time: datetime | None = None


class AlertActed(AlertPublic):
    """The alert after an action. ``changed`` is false when the same operator had already
    taken this action (a request retried: nothing was changed), as ``message`` says
    ("alert 7 is already acknowledged by alice at ..."); true with "alert 7 is now ..."."""

    changed: bool
    message: str


class AlertAction(_Schema):
    by: str = Field(default="api", min_length=1, max_length=200)
    note: str | None = Field(default=None, max_length=2000)


class ScoreRequest(_Schema):
    """Records to score now, each a JSON object of feature fields (null: a missing value). A
    windowed model scores each record with the records before it of its entity in this
    request (in the order given), as a CSV of them would be scored."""

    records: list[dict[str, Any]] = Field(min_length=1, max_length=MAX_SCORE_RECORDS)
    version: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        description="A registered version or a prefix of its content hash (default: the newest)",
    )


class ScoredRecord(BaseModel):
    index: int
    score: float
    recon_error: float
    percentile: float
    is_anomaly: bool
    severity: Literal["warning", "critical"] | None
    top_features: list[tuple[str, float]]
    window_status: str | None = None


class RejectedRecord(BaseModel):
    index: int
    reason: str


class ScoreResponse(BaseModel):
    """Scores under the threshold in force (nothing is stored: the stream and batch jobs
    store theirs); every record is either in ``scores`` or in ``rejects``, by its index.
    ``threshold_version`` is null where no stored version applies: the model's own calibrated
    threshold (a name with no threshold, or a version pinned while another version's
    calibration is in force)."""

    model: str
    model_version: str
    threshold: float
    critical: float | None
    threshold_version: int | None
    scores: list[ScoredRecord]
    rejects: list[RejectedRecord]
    warnings: list[str] = Field(
        default_factory=list,
        description="What the caller should know about these scores: the threshold in force "
        "set for another model version than the one scored (its scores have a scale of their "
        "own, so the decisions may flag too much or too little), as 'score --db' warns; a "
        "field's values outside the categories learned in training (scored as a novelty)",
    )


class ErrorDetail(BaseModel):
    """An error: what went wrong and what to do, in one line."""

    detail: str


_ERRORS = {
    400: "A well-formed but impossible request (EVT risk outside the tail, critical below "
    "warning, an alert already resolved...)",
    401: "A change without the server's bearer token (Authorization: Bearer <token>)",
    403: "The API serves read-only: no ANOMALY_VAE_API_TOKEN where it runs",
    404: "No such model, model version or alert",
    409: "The registered model version's directory cannot be loaded on this server",
    500: "A fault in the server (logged there with its traceback; the answer carries none)",
    413: f"A request body over {MAX_BODY_BYTES // 2**20} MiB",
    415: "A request body sent compressed (Content-Encoding): send it uncompressed",
    503: "The results database is unavailable",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for these error statuses (each a JSON body with ``detail``)."""
    return {code: {"model": ErrorDetail, "description": _ERRORS[code]} for code in codes}


class Health(BaseModel):
    status: Literal["ok"]
    version: str
    database: str
    # No change can be made through this server: no token configured, or the database takes
    # no changes from its user (a missing privilege, a read-only role, a standby).
    read_only: bool
    read_only_reason: str | None = None


# ================================================================== dependencies
def get_connection(request: Request) -> Iterator[Connection]:
    """A connection from the app's engine for one request."""
    engine: Engine = request.app.state.engine
    with engine.connect() as connection:
        yield connection


# The token as OpenAPI's bearer scheme: /docs has its "Authorize" button, and a generated
# client sends the header. As a header parameter named Authorization (which OpenAPI says
# to ignore), /docs had no field for it and every change tried there was a 401.
_BEARER = HTTPBearer(
    auto_error=False,
    scheme_name="token",
    description=f"The token set in {TOKEN_ENV} where the server runs (changes only)",
)


def require_writer(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)] = None,
) -> None:
    """Refuse writes without the configured bearer token (403 when none is configured)."""
    settings: ApiSettings = request.app.state.settings
    authorization = request.headers.get("authorization")
    if settings.token is None:
        raise HTTPException(
            403, f"this API serves read-only: set {TOKEN_ENV} where it runs to allow changes"
        )
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        given.strip().encode(), settings.token.encode()
    ):
        raise HTTPException(
            401,
            "a change needs 'Authorization: Bearer <token>' with the server's token",
            headers={"WWW-Authenticate": "Bearer"},
        )


Conn = Annotated[Connection, Depends(get_connection)]
Writer = Depends(require_writer)


class _BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes is a 413, told by its
    Content-Length before any of it is read, or, sent in chunks, as soon as the bytes received
    pass the limit (the route reading it gets the 413 as an HTTPException)."""

    def __init__(self, app: Any, limit: int) -> None:
        self.app = app
        self.limit = limit

    def _detail(self) -> str:
        return f"the request body is over {self.limit // 2**20} MiB: send fewer records per request"

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        coding = headers.get(b"content-encoding", b"").decode("latin-1").strip().lower()
        if coding not in ("", "identity"):
            # A gzip body was read as the JSON text itself: "it is not UTF-8", and a body
            # merely labelled so (br) was read as if the header were not there.
            response = JSONResponse(
                {
                    "detail": f"the body is sent with Content-Encoding {coding!r}, which this "
                    "API does not decode: send it uncompressed, without that header"
                },
                status_code=415,
            )
            await response(scope, receive, send)
            return
        length = headers.get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            response = JSONResponse({"detail": self._detail()}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def limited() -> Any:
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise HTTPException(413, self._detail())
            return message

        await self.app(scope, limited, send)


# The service's own endpoints, which read no query parameter and ignore any they are given.
UNFILTERED_PATHS = frozenset({"/health", "/metrics"})


async def _known_query_parameters(request: Request) -> None:
    """Refuse a query parameter the endpoint does not read (a 422 naming it and the ones it
    reads). They were ignored: ``/runs?since=...`` listed every run, ``/anomalies?state=open``
    every flagged record, ``/dead-letters/summary?limit=5`` every reason, each a 200 that
    looked like the filter applied, and a misspelt ``befor_id`` gave the first page again."""
    route = request.scope.get("route")
    dependant = getattr(route, "dependant", None)
    if (
        dependant is None
        or not request.query_params
        or not getattr(route, "include_in_schema", True)
        # Probes and scrapers add parameters of their own (a cache buster, a scrape's
        # ?name[]=): refused, the service read as down; nothing there is filtered.
        or request.url.path in UNFILTERED_PATHS
    ):
        return
    known: set[str] = set()
    pending = [dependant]
    while pending:  # the endpoint's own parameters and its dependencies' (DeadLetterQuery)
        node = pending.pop()
        known.update(param.alias for param in node.query_params)
        pending.extend(node.dependencies)
    unknown = [name for name in dict.fromkeys(request.query_params) if name not in known]
    if not unknown:
        return
    reads = ", ".join(sorted(known)) if known else "no query parameters"
    raise RequestValidationError(
        [
            {
                "type": "extra_forbidden",
                "loc": ("query", name),
                "msg": f"unknown query parameter {name!r}: {request.url.path} reads {reads}",
                "input": request.query_params.get(name),
            }
            for name in unknown
        ]
    )


class _HeadAsGet:
    """ASGI middleware: a HEAD request is answered as the GET of that path would be, with its
    status and headers and no body. FastAPI's routes take only the methods they name, so
    ``HEAD /health`` (an uptime check, ``curl -I``, a load balancer's probe) was a 405, which
    read as the service down; HTTP requires HEAD wherever GET is served."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD":
            await self.app(scope, receive, send)
            return

        async def headers_only(message: Any) -> None:
            if message["type"] == "http.response.body":
                message = {**message, "body": b""}
            await send(message)

        await self.app({**scope, "method": "GET"}, receive, headers_only)


# ========================================================================== app
def create_app(settings: ApiSettings, engine: Engine) -> FastAPI:
    """The API on ``engine`` (built and checked by the caller)."""
    # /docs (Swagger UI) and /redoc with their scripts, styles and icon served by this app
    # from the fastapi-offline package: FastAPI's own pages load them from a CDN, and were
    # blank on a machine without internet access (a plant network, an air-gapped site).
    app = FastAPIOffline(
        static_url=DOCS_ASSETS_URL,
        title="anomaly-vae",
        version=__version__,
        description="Thresholds, alerts, anomalies and models of the anomaly-vae results "
        "database. Writes need `Authorization: Bearer <token>` (ANOMALY_VAE_API_TOKEN).",
        responses=_errors(500, 503),
        dependencies=[Depends(_known_query_parameters)],
    )
    app.state.settings = settings
    app.state.engine = engine
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    app.add_middleware(_HeadAsGet)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes the input, and a NaN or an infinity in it (JSON allows
        # neither) made the response itself fail: a 500 instead of the 422.
        detail = [
            _short_input(_body_shape(error, request.headers.get("content-type")))
            for error in _json_safe(jsonable_encoder(exc.errors()))
        ]
        return JSONResponse({"detail": detail}, status_code=422)

    # A user's error as its one-line message in "detail" (the most specific class wins).
    for error, status in (
        (NotFoundError, 404),
        (ModelUnavailableError, 409),
        (ConfigError, 400),
        (InputFileError, 400),
    ):
        app.add_exception_handler(error, _detail_response(status))

    @app.exception_handler(SchemaError)
    async def _schema(_request: Request, exc: SchemaError) -> JSONResponse:
        return _unprocessable(str(exc))

    @app.exception_handler(DataError)
    async def _unstorable(_request: Request, exc: DataError) -> JSONResponse:
        # The database refused a value of the request (PostgreSQL: a NUL character in text,
        # a number out of a column's range): the client's to fix, not an outage (503).
        why = str(exc.orig if exc.orig is not None else exc).strip().splitlines()
        return _unprocessable(
            "a value in this request cannot go to the results database: "
            f"{why[0] if why else 'refused'}; send it without that value"
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # A body that is not JSON Python can read (not UTF-8, nested too deep, an integer of
        # over 4,300 digits) was FastAPI's 400 "There was an error parsing the body", where
        # JSON with a syntax error is a 422 (json_invalid): both are malformed bodies.
        if exc.status_code == 400 and exc.detail == "There was an error parsing the body":
            return _unprocessable(
                f"the body cannot be read as JSON: {_parse_failure(exc.__cause__)}",
                loc=["body"],
                kind="json_invalid",
            )
        # Starlette's own answers for a path or a method nothing serves were the bare words
        # "Not Found" / "Method Not Allowed": say which, and where the endpoints are listed.
        where = f"{request.method} {request.url.path}"
        if exc.status_code == 404 and exc.detail == "Not Found":
            exc = StarletteHTTPException(
                404, f"no endpoint {where}: the endpoints are listed at /docs", exc.headers
            )
        elif exc.status_code == 405 and exc.detail == "Method Not Allowed":
            allow = (exc.headers or {}).get("Allow", "")
            if "GET" in allow.split(", ") and "HEAD" not in allow:
                allow += ", HEAD"  # served by _HeadAsGet wherever GET is
            exc = StarletteHTTPException(
                405,
                f"{where}: that path takes {allow or 'other methods'}",
                {**(exc.headers or {}), "Allow": allow} if allow else exc.headers,
            )
        return await http_exception_handler(request, exc)

    @app.exception_handler(Exception)
    async def _fault(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answered a fault with the plain text "Internal Server Error", no JSON, so
        # the one error that has no message broke a client reading "detail". The traceback
        # still goes to the server's log (Starlette re-raises after this answer).
        return JSONResponse(
            {
                "detail": f"internal error ({type(exc).__name__}) answering "
                f"{request.method} {request.url.path}: see the server's log"
            },
            status_code=500,
        )

    @app.exception_handler(SQLAlchemyError)
    async def _database(_request: Request, exc: SQLAlchemyError) -> JSONResponse:
        logger.warning("database error: %s", str(exc).splitlines()[0][:300])
        return JSONResponse({"detail": _database_trouble(exc, settings.database)}, status_code=503)

    # ---------------------------------------------------------------- health, metrics
    @app.get("/health", response_model=Health, tags=["service"])
    def health(conn: Conn) -> Health:
        """Up, and the database answers."""
        conn.execute(select(1))
        refused = database_refuses_changes(conn)
        reason = (
            f"no {TOKEN_ENV} where the server runs" if settings.read_only else None
        ) or refused
        return Health(
            status="ok",
            version=__version__,
            database=settings.database.display,
            read_only=reason is not None,
            read_only_reason=reason,
        )

    @app.get("/metrics", response_class=PlainTextResponse, tags=["service"])
    def metrics(request: Request) -> PlainTextResponse:
        """Prometheus text format: whether the database answered, records scored / flagged /
        rejected, alerts, alert events waiting in the outbox, thresholds in force, and each
        running stream scorer's lag, latency and rate. With the database down, a 200 with
        ``anomaly_vae_database_up 0``: a 503 failed the scrape, and the monitor saw the API
        down, not its database."""
        try:
            with request.app.state.engine.connect() as conn:
                text = prometheus_text(conn)
        except SQLAlchemyError as exc:
            logger.warning("database error: %s", str(exc).splitlines()[0][:300])
            text = _database_up_text(False)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    # ---------------------------------------------------------------------- models
    @app.get("/models", response_model=list[ModelPublic], tags=["models"])
    def models(conn: Conn) -> list[ModelPublic]:
        """Registered model versions, newest first."""
        return [ModelPublic.model_validate(r._asdict()) for r in repo.list_models(conn)]

    @app.get("/models/{name}", response_model=ModelDetail, tags=["models"], responses=_errors(404))
    def model_detail(name: str, conn: Conn) -> ModelDetail:
        """A model name's versions and the threshold in force."""
        versions = [
            ModelPublic.model_validate(r._asdict())
            for r in repo.list_models(conn)
            if r.name == name
        ]
        if not versions:
            raise NotFoundError(f"no model named {name!r} is registered")
        row = repo.threshold_in_force(conn, model_name=name)
        in_use = model_in_use(conn, name=name)
        note = None if row is None else _other_version_note(row, in_use, "scoring uses")
        return ModelDetail(
            name=name,
            versions=versions,
            in_use=in_use.version,
            threshold=None if row is None else _threshold(row),
            warnings=[] if note is None else [note],
        )

    # ------------------------------------------------------------------ thresholds
    @app.get(
        "/models/{name}/threshold",
        response_model=ThresholdPublic,
        tags=["thresholds"],
        responses=_errors(404),
    )
    def threshold(name: str, conn: Conn) -> ThresholdPublic:
        """The threshold in force."""
        _require_model(conn, name)
        row = repo.threshold_in_force(conn, model_name=name)
        if row is None:
            raise NotFoundError(f"model {name!r} has no threshold")
        return _threshold(row)

    @app.get(
        "/models/{name}/thresholds",
        response_model=list[ThresholdPublic],
        tags=["thresholds"],
        responses=_errors(404),
    )
    def threshold_history(
        name: str,
        conn: Conn,
        before_id: Annotated[
            int | None,
            Query(
                description="The ``id`` of the last version of a page: the versions after it "
                "in this order (the next page)"
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    ) -> list[ThresholdPublic]:
        """Threshold versions, newest (in force) first; ``limit`` at a time, the next page
        with ``before_id`` = the last ``id`` seen."""
        _require_model(conn, name)
        rows = repo.list_thresholds(conn, model_name=name, limit=limit, before_id=before_id)
        return [_threshold(r) for r in rows]

    @app.post(
        "/models/{name}/thresholds",
        response_model=ThresholdWritten,
        status_code=201,
        tags=["thresholds"],
        dependencies=[Writer],
        responses={**_UNCHANGED, **_errors(400, 401, 403, 404, 413, 415)},
    )
    def create_threshold(
        name: str, body: ThresholdCreate, conn: Conn, request: Request, response: Response
    ) -> ThresholdWritten:
        """Put a new threshold version in force (live scorers apply it within seconds); 200
        and no new version when the version in force already has these settings."""
        with replay_limit(request.app.state.settings.max_replay_scores):
            return _new_version(conn, name, body, response)

    @app.patch(
        "/models/{name}/thresholds",
        response_model=ThresholdWritten,
        status_code=201,
        tags=["thresholds"],
        dependencies=[Writer],
        responses={**_UNCHANGED, **_errors(400, 401, 403, 404, 413, 415)},
    )
    def update_threshold(
        name: str, body: ThresholdUpdate, conn: Conn, request: Request, response: Response
    ) -> ThresholdWritten:
        """A new version changing only what is given (e.g. just the alert rule); 200 and no
        new version when that changes nothing (a retried request)."""
        given = {"warning", "critical", "alert_rule"} & body.model_fields_set
        if body.alert_rule is None or not body.alert_rule.model_dump(exclude_none=True):
            given.discard("alert_rule")  # null or {} changes no setting
        if not given:
            raise ConfigError("nothing to change: give warning, critical or alert_rule")
        with replay_limit(request.app.state.settings.max_replay_scores):
            return _new_version(conn, name, body, response)

    @app.post(
        "/models/{name}/thresholds/rollback",
        response_model=ThresholdWritten,
        status_code=201,
        tags=["thresholds"],
        dependencies=[Writer],
        responses={**_UNCHANGED, **_errors(400, 401, 403, 404, 413, 415)},
    )
    def rollback_threshold_version(
        name: str, body: ThresholdRollback, conn: Conn, response: Response
    ) -> ThresholdWritten:
        """Put an earlier threshold version back in force, as a new version; 200 and no new
        version when the version in force already has its settings (it is that version, or a
        rollback to it: a retried request)."""
        with conn.begin():
            written = rollback_threshold(
                conn,
                model_name=name,
                to_version=body.version,
                created_by=body.created_by,
                reason=body.reason,
            )
        if written.created:
            logger.info(
                "model %s: threshold v%d (back to v%d) set by %r",
                name,
                written.row.version,
                body.version,
                body.created_by,
            )
        return _written(written, response)

    @app.post(
        "/models/{name}/thresholds/preview",
        response_model=ThresholdPreviewPublic,
        tags=["thresholds"],
        responses=_errors(400, 404, 413, 415),
    )
    def preview(
        name: str, body: ThresholdPreviewRequest, conn: Conn, request: Request
    ) -> ThresholdPreviewPublic:
        """What a threshold and alert rule would have done to the stored scores (read-only)."""
        with replay_limit(request.app.state.settings.max_replay_scores):
            result = preview_threshold(
                conn,
                model_name=name,
                change=_change(body),
                since=body.since,
                until=body.until,
            )
        return ThresholdPreviewPublic.model_validate(result.as_dict())

    # --------------------------------------------------------------------- scoring
    models_loaded = _ModelCache(MODEL_CACHE_SIZE)

    @app.post(
        "/models/{name}/score",
        response_model=ScoreResponse,
        tags=["models"],
        responses=_errors(400, 404, 409, 413, 415),
    )
    def score(name: str, body: ScoreRequest, request: Request) -> Response:
        """Score records now with a registered model version, loaded from its model directory
        on this server, under the threshold in force. Nothing is written."""
        # A connection of its own, back in the pool before the model loads and scores: held
        # to the end of the request (the Conn dependency), 15 requests scoring at once took
        # every pooled connection, and /health and every listing waited 30 s, then answered
        # 503 "the results database is unavailable".
        with request.app.state.engine.connect() as conn:
            version = _registered_version(conn, name, body.version)
            row = repo.threshold_in_force(conn, model_name=name)
        model = models_loaded.get(version.path, version.content_hash, name)
        if (
            row is not None
            and row.parameters.get("from") == repo.FROM_CALIBRATION
            and row.parameters.get("model_version") != version.version
        ):
            # The threshold in force is another version's calibration (the version scored
            # last): on this version's score scale it flagged too much or too little. Its own
            # calibration instead, as 'score --db' with this version would put in force.
            row = None
        warning = float(row.warning) if row is not None else float(model.threshold_)
        critical = None if row is None or row.critical is None else float(row.critical)
        result = _score_records(model, body.records, warning, critical, row, version)
        note = None if row is None else _other_version_note(row, version, "this request scores")
        if note is not None:
            result.warnings.append(note)
        # Serialised once, as built: through response_model FastAPI dumped the 10,000
        # ScoredRecords to dicts, validated them again and then serialised them.
        return Response(result.model_dump_json(), media_type="application/json")

    # ------------------------------------------------------------ anomalies, alerts
    @app.get(
        "/anomalies",
        response_model=list[AnomalyPublic],
        tags=["anomalies"],
        responses=_errors(404),
    )
    def anomalies(
        conn: Conn,
        model: str | None = None,
        entity: str | None = None,
        since: Annotated[
            UtcQueryDatetime | None,
            Query(
                description="Records whose time (event time, else scoring time) is at or "
                "after this (ISO 8601; without a time zone: UTC)"
            ),
        ] = None,
        until: Annotated[
            UtcQueryDatetime | None,
            Query(
                description="Records whose time is before this (ISO 8601; without a time zone: UTC)"
            ),
        ] = None,
        before_id: Annotated[
            int | None,
            Query(
                description="The ``id`` of the last record of a page: the records after it "
                "in this order (the next page; ``until`` would skip the rest of that time)"
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    ) -> list[AnomalyPublic]:
        """Flagged records, newest first (event time, else scoring time). ``alert_state``:
        the state of the alert the record opened (null for a record that joined an alert or
        opened none)."""
        _require_model(conn, model)
        rows = repo.list_anomalies(
            conn,
            model_name=model,
            since=since,
            until=until,
            entity=entity,
            limit=limit,
            before_id=before_id,
        )
        return [AnomalyPublic.model_validate(r._asdict()) for r in rows]

    # ------------------------------------------------------------------------- runs
    @app.get("/runs", response_model=list[RunPublic], tags=["runs"], responses=_errors(404))
    def runs(
        conn: Conn,
        kind: Literal["batch", "stream"] | None = None,
        status: Literal["running", "succeeded", "failed"] | None = None,
        model: str | None = None,
        before_id: Annotated[
            int | None,
            Query(description="Only runs before this id: the next page after the last seen"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 20,
    ) -> list[RunPublic]:
        """Scoring runs (batch jobs, stream sessions), newest first: counts, status, the
        error a failed run ended with, a stream run's last reported lag, latency and rate."""
        _require_model(conn, model)
        rows = repo.list_runs(
            conn, limit=limit, kind=kind, status=status, model_name=model, before_id=before_id
        )
        return [RunPublic.model_validate(r._asdict()) for r in rows]

    @app.get("/runs/{run_id}", response_model=RunPublic, tags=["runs"], responses=_errors(404))
    def run(run_id: int, conn: Conn) -> RunPublic:
        rows = repo.list_runs(conn, run_id=run_id, limit=1)
        if not rows:
            raise NotFoundError(f"no scoring run {run_id}")
        return RunPublic.model_validate(rows[0]._asdict())

    # ----------------------------------------------------------------- dead letters
    @app.get(
        "/dead-letters",
        response_model=list[DeadLetterPublic],
        tags=["dead letters"],
        responses=_errors(404),
    )
    def dead_letters(
        conn: Conn,
        where: DeadLetterQuery,
        before_id: Annotated[
            int | None,
            Query(description="Only ids below this: the next page after the last ``id`` seen"),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    ) -> list[DeadLetterPublic]:
        """Records that could not be scored, newest first (by ``id``), with the reason and
        the record as received."""
        page = dataclasses.replace(where, before_id=before_id)
        return [
            DeadLetterPublic.model_validate(row)
            for row in list_dead_letters(conn, page, limit=limit)
        ]

    @app.get(
        "/dead-letters/summary",
        response_model=list[DeadLetterReason],
        tags=["dead letters"],
        responses=_errors(404),
    )
    def dead_letter_summary(conn: Conn, where: DeadLetterQuery) -> list[DeadLetterReason]:
        """Records that could not be scored, counted by reason (the record's own value and
        numbers masked), most common first."""
        return [
            DeadLetterReason(
                reason=c.pattern,
                count=c.count,
                example=c.example_reason,
                example_source_key=c.example_source_key,
                first_rejected_at=c.first_rejected_at,
                last_rejected_at=c.last_rejected_at,
                runs=list(c.runs),
            )
            for c in summarize(conn, where)
        ]

    @app.get("/alerts", response_model=list[AlertPublic], tags=["alerts"], responses=_errors(404))
    def alerts(
        conn: Conn,
        state: Literal["open", "acknowledged", "resolved", "active"] | None = None,
        model: str | None = None,
        entity: str | None = None,
        since: Annotated[
            UtcQueryDatetime | None,
            Query(
                description="Alerts opened (``opened_at``: when the scorer wrote them, not "
                "the event time in ``time``) at or after this (ISO 8601; without a time zone: UTC)"
            ),
        ] = None,
        until: Annotated[
            UtcQueryDatetime | None,
            Query(
                description="Alerts opened (``opened_at``) before this (ISO 8601; without a "
                "time zone: UTC): with ``since``, a period; with ``limit``, the page before the "
                "oldest ``opened_at`` seen"
            ),
        ] = None,
        before_id: Annotated[
            int | None,
            Query(
                description="The ``id`` of the last alert of a page: the alerts after it in "
                "this order (the next page; ``until`` would skip the rest of the alerts opened "
                "at that time)"
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=10_000)] = 50,
    ) -> list[AlertPublic]:
        """Alerts, newest opened first (``opened_at``); ``state=active``: open or
        acknowledged."""
        _require_model(conn, model)
        rows = list_alerts(
            conn,
            state=state,
            model_name=model,
            entity=entity,
            since=since,
            until=until,
            limit=limit,
            before_id=before_id,
        )
        return [AlertPublic.model_validate(r) for r in rows]

    @app.get(
        "/alerts/{alert_id}",
        response_model=AlertPublic,
        tags=["alerts"],
        responses=_errors(404),
    )
    def alert(alert_id: int, conn: Conn) -> AlertPublic:
        rows = list_alerts(conn, alert_id=alert_id, limit=1)
        if not rows:
            raise NotFoundError(f"no alert {alert_id}")
        return AlertPublic.model_validate(rows[0])

    @app.post(
        "/alerts/{alert_id}/acknowledge",
        response_model=AlertActed,
        tags=["alerts"],
        dependencies=[Writer],
        responses=_errors(400, 401, 403, 404, 413, 415),
    )
    def acknowledge(alert_id: int, conn: Conn, body: AlertAction | None = None) -> AlertActed:
        """Acknowledge an open alert; acknowledged again by the same ``by`` (a retried
        request), nothing changes and the answer says so (``changed`` false)."""
        return _act(conn, alert_id, "acknowledge", body or AlertAction())

    @app.post(
        "/alerts/{alert_id}/resolve",
        response_model=AlertActed,
        tags=["alerts"],
        dependencies=[Writer],
        responses=_errors(400, 401, 403, 404, 413, 415),
    )
    def resolve(alert_id: int, conn: Conn, body: AlertAction | None = None) -> AlertActed:
        """Resolve an alert; resolved again by the same ``by`` (a retried request), nothing
        changes and the answer says so (``changed`` false)."""
        return _act(conn, alert_id, "resolve", body or AlertAction())

    return app


def database_refuses_changes(conn: Connection) -> str | None:
    """Why the database takes no changes from the API's user (None: it takes them). Only
    PostgreSQL is asked: a standby, a read-only role (``default_transaction_read_only``), or
    a user without the privileges the API's writes need (a new threshold version, an alert
    acknowledged or resolved)."""
    if conn.dialect.name != "postgresql":
        return None
    user, standby, read_only, privileged = conn.exec_driver_sql(
        "SELECT current_user, pg_is_in_recovery(), current_setting('transaction_read_only'), "
        "has_table_privilege('thresholds', 'SELECT, INSERT') "
        "AND has_sequence_privilege(pg_get_serial_sequence('thresholds', 'id'), 'USAGE') "
        "AND has_table_privilege('alerts', 'SELECT, UPDATE')"
    ).one()
    if standby:
        return "the database is a standby (read-only): point the URL at the primary"
    if read_only == "on":
        return (
            f"the database user {user!r} has read-only transactions (default_transaction_read_only)"
        )
    if not privileged:
        return (
            f"the database user {user!r} may not change thresholds or alerts (INSERT on "
            "thresholds and its id sequence, UPDATE on alerts)"
        )
    return None


def _database_trouble(exc: SQLAlchemyError, target: DatabaseTarget) -> str:
    """What a 503 says: the database is down, or, where it answered but refused, why (the
    API's database user lacks a privilege, a standby takes no writes), so that an operator
    fixes that instead of waiting for an outage to end."""
    from anomaly_vae.storage.engine import connection_error

    orig = getattr(exc, "orig", None) or exc
    text = str(orig).lower()
    if any(s in text for s in ("permission denied", "must be owner", "read-only transaction")):
        return f"the results database refused this: {connection_error(exc, target)}"
    return f"the results database ({target.where}) is unavailable"


def _unprocessable(
    message: str, loc: list[str | int] | None = None, kind: str = "value_error"
) -> JSONResponse:
    """A 422 in the shape of FastAPI's validation errors (``HTTPValidationError``: a list of
    ``{type, loc, msg}`` in ``detail``), as the OpenAPI schema documents every 422: the
    database's refusals and schema errors came as a bare string, which a client generated
    from the schema could not read. ``loc``: ``[]`` where the part of the request is not
    known."""
    return JSONResponse(
        {"detail": [{"type": kind, "loc": loc or [], "msg": message}]}, status_code=422
    )


def _body_shape(error: Any, content_type: str | None) -> Any:
    """A whole body of the wrong kind said "Input should be a valid dictionary or object to
    extract fields from": for JSON sent as ``text/plain``, form-encoded or with no
    Content-Type (which FastAPI does not read as JSON: curl's ``-d`` sends a form), and for a
    JSON array or string where an object belongs. The message now says which, and what to send."""
    if error.get("type") != "model_attributes_type" or list(error.get("loc", ())) != ["body"]:
        return error
    media = (content_type or "").split(";")[0].strip().lower()
    if media != "application/json" and not (
        media.startswith("application/") and media.endswith("+json")
    ):
        sent = f"as {media!r}" if media else "with no Content-Type"
        msg = (
            f"the body came {sent}, which is not read as JSON: send JSON with the header "
            "'Content-Type: application/json' (curl: -H 'Content-Type: application/json' "
            "or --json)"
        )
    else:
        value = error.get("input")
        kind = {list: "an array", str: "a string", bool: "a boolean"}.get(type(value), "null")
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            kind = "a number"
        msg = (
            f"the body is {kind}: send a JSON object ({{...}}) with the fields this request "
            "takes (see /docs)"
        )
    return {**error, "msg": msg}


def _parse_failure(cause: BaseException | None) -> str:
    if isinstance(cause, UnicodeDecodeError):
        return "it is not UTF-8"
    if isinstance(cause, RecursionError):
        return "it is nested too deep"
    if isinstance(cause, ValueError) and "digits" in str(cause):
        return "a number in it has too many digits"
    return "it is not valid JSON"


def _detail_response(status: int) -> Callable[[Request, Exception], Awaitable[JSONResponse]]:
    async def respond(_request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status)

    return respond


def _require_model(conn: Connection, name: str | None) -> None:
    """A filter on a model name nobody registered is a 404, not an empty list, which would read
    as a clean bill for a misspelt name."""
    if name is not None:
        repo.registered_versions(conn, name=name)


def dead_letter_filter(
    conn: Conn,
    model: str | None = None,
    run: int | None = None,
    since: Annotated[UtcQueryDatetime | None, _DL_SINCE] = None,
    until: Annotated[UtcQueryDatetime | None, _DL_UNTIL] = None,
    reason: Annotated[str | None, _DL_REASON] = None,
) -> DeadLetterFilter:
    """The dead-letter endpoints' filters (a dependency: one declaration for both)."""
    _require_model(conn, model)
    return DeadLetterFilter(model_name=model, run_id=run, since=since, until=until, reason=reason)


DeadLetterQuery = Annotated[DeadLetterFilter, Depends(dead_letter_filter)]


def _short_input(error: Any) -> Any:
    """A validation error with its ``input`` cut to its first ``MAX_ECHOED_INPUT`` characters
    of JSON: the whole input (10,001 records, a reason of megabytes) came back in the 422."""
    if not isinstance(error, dict) or "input" not in error:
        return error
    text = json.dumps(error["input"], ensure_ascii=False)
    if len(text) <= MAX_ECHOED_INPUT:
        return error
    shown = f"{text[:MAX_ECHOED_INPUT]}... ({len(text):,} characters of JSON, not all shown)"
    return {**error, "input": shown}


def _json_safe(value: Any) -> Any:
    """``value`` with every NaN or infinity replaced by its text ('nan', 'inf')."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def _other_version_note(threshold: Any, version: Any, scoring: str) -> str | None:
    """``storage.sink.other_version_note`` with the API's way to set a threshold."""
    from anomaly_vae.storage.sink import other_version_note

    return other_version_note(
        threshold,
        version,
        scoring=scoring,
        how_to_set=f"POST /models/{version.name}/thresholds, or 'anomaly-vae thresholds set "
        f"{version.name} ... --reason ...'; preview it first",
    )


MIN_VERSION_PREFIX = 4


def _registered_version(conn: Connection, name: str, version: str | None) -> Any:
    """The version of ``name`` in use (``tuning.model_in_use``: the one scored last, whose
    threshold is in force), or the one whose version is ``version``."""
    rows = repo.registered_versions(conn, name=name)
    if version is None:
        return model_in_use(conn, name=name)
    exact = [row for row in rows if row.version == version or row.content_hash == version]
    # A prefix of at least 4 digits, as git takes one: "1" or "2" (a version number, a
    # threshold version) matched whichever hash began with that digit, and scored it.
    prefix = version.lower() if len(version) >= MIN_VERSION_PREFIX else None
    matches = exact or [row for row in rows if prefix and row.content_hash.startswith(prefix)]
    if len(matches) > 1:
        shown = ", ".join(r.version for r in matches[:10])
        raise ConfigError(
            f"version {version!r} of model {name!r} is ambiguous: it begins {len(matches)} "
            f"versions ({shown}); give more of its digits"
        )
    if matches:
        return matches[0]
    known = ", ".join(r.version for r in rows[:10])
    short = (
        f"; a prefix of its content hash needs at least {MIN_VERSION_PREFIX} digits"
        if prefix is None
        else ""
    )
    raise NotFoundError(f"model {name!r} has no version {version!r} (registered: {known}){short}")


class _ModelCache:
    """Loaded models by content hash, the ``size`` most recently used (a load reads the model
    directory's weights and JSON only: no code from the file runs)."""

    def __init__(self, size: int) -> None:
        import threading
        from collections import OrderedDict

        self.size = size
        self.models: OrderedDict[str, Any] = OrderedDict()
        self.lock = threading.Lock()

    def get(self, path: str | None, content_hash: str, name: str) -> Any:
        from anomaly_vae.errors import ModelFileError
        from anomaly_vae.estimator import AnomalyVAE

        with self.lock:
            if content_hash in self.models:
                self.models.move_to_end(content_hash)
                return self.models[content_hash]
            if not path:
                raise ModelUnavailableError(f"model {name!r} was registered without a directory")
            try:
                model = AnomalyVAE.load(path, device="cpu")
            except ModelFileError as exc:
                raise ModelUnavailableError(
                    f"model {name!r}: its directory {path} cannot be loaded on this server ({exc})"
                ) from None
            if model.model_hash_ != content_hash:
                raise ModelUnavailableError(
                    f"model {name!r}: {path} now holds another version "
                    f"({str(model.model_hash_)[:12]}, not {content_hash[:12]})"
                )
            self.models[content_hash] = model
            while len(self.models) > self.size:
                self.models.popitem(last=False)
            return model


class ModelUnavailableError(NotFoundError):
    """A registered model version whose directory this server cannot load (409)."""


def _huge_integer_reason(name: str, value: object) -> str | None:
    """Why an integer too large for a float (beyond about 1.8e308) cannot be read."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > _FLOAT_MAX:
        return f"field {name!r}: an integer of {len(str(abs(value)))} digits is not a finite number"
    return None


_FLOAT_MAX = int(sys.float_info.max)


def _score_records(
    model: Any,
    records: list[dict[str, Any]],
    warning: float,
    critical: float | None,
    threshold_row: Any,
    version: Any,
) -> ScoreResponse:
    import pandas as pd

    from anomaly_vae.sources.kafka import (
        entity_type_reason,
        missing_fields_reason,
        non_finite_reason,
    )
    from anomaly_vae.storage.sink import severity_labels

    features = model.schema_.names
    numeric = model.schema_.numeric
    window = model.config_.window
    # Read as numbers: an integer past float's range (JSON has no limit; Python's reader
    # takes 10**400) made pandas raise OverflowError, a 500.
    as_numbers = [*numeric, *([window.time] if window is not None and window.time else [])]
    # An array or object is no entity: the stream rejects it; its text was taken as one here.
    entity_fields = list(
        dict.fromkeys(
            n
            for n in (model.config_.columns.entity, window.entity if window is not None else None)
            if n
        )
    )
    rejects = []
    for i, record in enumerate(records):
        reason: str | None
        if not set(features) <= record.keys():
            reason = missing_fields_reason(
                [f for f in features if f not in record],
                [k for k in record if k not in features],
                record=record,
            )
        else:  # as the Kafka decoder: a NaN is poison, not a missing value (that is null)
            reason = (
                next(
                    (why for f in numeric if (why := non_finite_reason(f, record[f])) is not None),
                    None,
                )
                or next(
                    (why for f in as_numbers if (why := _huge_integer_reason(f, record.get(f)))),
                    None,
                )
                or next(
                    (why for f in entity_fields if (why := entity_type_reason(f, record.get(f)))),
                    None,
                )
            )
        if reason is not None:
            rejects.append(RejectedRecord(index=i, reason=reason))
    missing = {r.index for r in rejects}
    kept = [i for i in range(len(records)) if i not in missing]
    if not kept:  # nothing to score: every record lacks a feature field
        kept_frame = pd.DataFrame({name: [] for name in features})
    else:
        # Only the fields the model reads: another field is ignored, even one named as a
        # column the scorer sets itself (a stream's '_entity', the message key), which took
        # the place of a windowed model's entity field and mixed the entities' windows.
        # Dropped from each record before the frame is built: a frame of every field of every
        # record (names all different) had records x fields cells, billions in one request.
        read = {*features, *(n for n in (model.config_.columns.entity,) if n)}
        if window is not None:
            read |= {n for n in (window.entity, window.time) if n}
        kept_frame = pd.DataFrame.from_records(
            [{k: v for k, v in records[i].items() if k in read} for i in kept], index=kept
        )
    if window is not None:
        # A window field no record has is each record's missing value (rejected with its
        # reason), as when some records lack it: it was a 422 for the whole request, and
        # when no record had every feature, one that named the entity field, not them.
        for name in (window.entity, window.time):
            if name and name not in kept_frame.columns:
                kept_frame[name] = pd.Series([None] * len(kept_frame), index=kept_frame.index)
    with collect_unseen_values() as unseen:
        scored = model.score_batch(kept_frame, threshold=warning, source="request")
    for index, reason in scored.rejects["reason"].items():
        rejects.append(RejectedRecord(index=int(index), reason=str(reason)))
    table = scored.scores
    severity = severity_labels(table, warning, critical)
    tops = scored.top_features_list(model.config_.scoring.top_features)
    status = table.get("window_status")
    statuses = [None] * len(table) if status is None else [str(s) for s in status.tolist()]
    # Column by column: DataFrame.iterrows() built a Series per record, most of the time of a
    # 10,000-record request.
    out = [
        ScoredRecord(
            index=int(index),
            score=float(score),
            recon_error=float(recon_error),
            percentile=float(percentile),
            is_anomaly=bool(is_anomaly),
            severity=severity[k],
            top_features=[(str(c), round(float(v), 4)) for c, v in tops[k]],
            window_status=statuses[k],
        )
        for k, (index, score, recon_error, percentile, is_anomaly) in enumerate(
            zip(
                table.index.tolist(),
                table["score"].tolist(),
                table["recon_error"].tolist(),
                table["percentile"].tolist(),
                table["is_anomaly"].tolist(),
                strict=True,
            )
        )
    ]
    return ScoreResponse(
        model=version.name,
        model_version=version.version,
        threshold=warning,
        critical=critical,
        threshold_version=None if threshold_row is None else int(threshold_row.version),
        scores=out,
        rejects=sorted(rejects, key=lambda r: r.index),
        warnings=[
            # The scorer's log names each value once per process; the response names a
            # request's own, in the same words ('North' for 'north' was scored as a novelty
            # and the response said nothing).
            model.preprocessor_.unseen_note(name, values, noun="field")
            for name, values in unseen.items()
        ],
    )


def _change(body: ThresholdCreate | ThresholdUpdate | ThresholdPreviewRequest) -> ThresholdChange:
    rule = body.alert_rule
    return ThresholdChange(
        warning=body.warning,
        critical=body.critical,
        clear_critical="critical" in body.model_fields_set and body.critical is None,
        # A whole rule (POST) replaces the one in force; a PATCH or a preview changes only
        # the settings it names, as the CLI's --debounce / --cooldown / --resolve-after do.
        alert_rule=alert_rule_of(rule) if isinstance(rule, AlertsConfig) else None,
        alert_rule_changes=rule.model_dump(exclude_none=True)
        if isinstance(rule, AlertRuleUpdate)
        else None,
    )


def _new_version(
    conn: Connection, name: str, body: ThresholdCreate | ThresholdUpdate, response: Response
) -> ThresholdWritten:
    with conn.begin():
        written = set_threshold(
            conn,
            model_name=name,
            change=_change(body),
            created_by=body.created_by,
            reason=body.reason,
        )
    if written.created:
        logger.info("model %s: threshold v%d set by %r", name, written.row.version, body.created_by)
    return _written(written, response)


def _written(written: ThresholdWrite, response: Response) -> ThresholdWritten:
    """A change's answer: 201 with the new version, or 200 with the version in force that
    already had the settings asked for."""
    if not written.created:
        response.status_code = 200
    return ThresholdWritten(**_threshold(written.row).model_dump(), created=written.created)


def _act(
    conn: Connection,
    alert_id: int,
    action: Literal["acknowledge", "resolve"],
    body: AlertAction,
) -> AlertActed:
    with conn.begin():
        try:
            acted = act_on_alert(conn, alert_id=alert_id, action=action, by=body.by, note=body.note)
        except NotFoundError:
            # As GET /alerts/{id} says it: the shared message sent API clients to a command
            # ('see anomaly-vae alerts list').
            raise NotFoundError(f"no alert {alert_id}") from None
    alert = AlertPublic.model_validate(list_alerts(conn, alert_id=alert_id, limit=1)[0])
    return AlertActed(**alert.model_dump(), changed=acted.changed, message=acted.message)


def _threshold(row: Any) -> ThresholdPublic:
    return ThresholdPublic(
        id=row.id,
        model=row.model_name,
        version=row.version,
        policy=row.policy,
        warning=row.warning,
        critical=row.critical,
        alert_rule=AlertsConfig(**AlertRule.from_dict(row.alert_rule).to_dict()),
        parameters=row.parameters,
        created_by=row.created_by,
        reason=row.reason,
        created_at=row.created_at,
    )


# ======================================================================= metrics
def _database_up_text(up: bool) -> str:
    out = _Exposition()
    _database_up(out, up)
    return out.text()


def _database_up(out: _Exposition, up: bool) -> None:
    out.family(
        "anomaly_vae_database_up", "gauge", "1 when the results database answered this scrape."
    )
    out.lines.append(f"anomaly_vae_database_up {int(up)}")


def prometheus_text(conn: Connection) -> str:
    """The metrics in Prometheus' text exposition format (version 0.0.4)."""
    out = _Exposition()
    now = repo.utc_now()
    runs = conn.execute(
        select(
            Model.name,
            ScoringRun.kind,
            func.sum(ScoringRun.rows_scored),
            func.sum(ScoringRun.rows_flagged),
            func.sum(ScoringRun.rows_rejected),
        )
        .join(Model, Model.id == ScoringRun.model_id)
        .group_by(Model.name, ScoringRun.kind)
        .order_by(Model.name, ScoringRun.kind)
    ).all()
    for name, column, help_text in (
        ("anomaly_vae_records_scored_total", 2, "Records scored."),
        ("anomaly_vae_records_flagged_total", 3, "Records that crossed the threshold in force."),
        ("anomaly_vae_records_rejected_total", 4, "Records rejected (dead letters)."),
    ):
        out.family(name, "counter", help_text)
        for counts in runs:
            out.sample(name, {"model": counts[0], "kind": counts[1]}, float(counts[column] or 0))
    alerts = conn.execute(
        select(Model.name, Alert.state, func.count())
        .join(Model, Model.id == Alert.model_id)
        .group_by(Model.name, Alert.state)
        .order_by(Model.name, Alert.state)
    ).all()
    out.family("anomaly_vae_alerts", "gauge", "Alerts by state.")
    # Every state of every registered model, 0 where none: a series that vanishes when the
    # last open alert is resolved reads as "no data" in a graph, and never as "back to 0".
    per_state = {(model, state): count for model, state, count in alerts}
    names = sorted(set(conn.scalars(select(Model.name).distinct())) | {m for m, _ in per_state})
    for model in names:
        for state in ALERT_STATES:
            value = per_state.get((model, state), 0)
            out.sample("anomaly_vae_alerts", {"model": model, "state": state}, value)
    # The alert outbox: events a stream scorer with an alerts topic wrote but has not yet seen
    # the broker acknowledge. 0 for every model while the scorers keep up; a number that
    # grows, or an oldest event that ages, is a backlog that is not draining.
    waiting = alert_outbox.counts_by_model(conn)
    out.family(
        "anomaly_vae_alert_outbox_events",
        "gauge",
        "Alert events in alert_outbox waiting to be published to the alerts topic.",
    )
    for model in sorted(set(names) | set(waiting)):
        out.sample(
            "anomaly_vae_alert_outbox_events", {"model": model}, waiting.get(model, (0, None))[0]
        )
    out.family(
        "anomaly_vae_alert_outbox_oldest_age_seconds",
        "gauge",
        "Seconds since the oldest alert event waiting in alert_outbox was written.",
    )
    for model, (_, oldest) in sorted(waiting.items()):
        out.sample(
            "anomaly_vae_alert_outbox_oldest_age_seconds",
            {"model": model},
            max((now - oldest).total_seconds(), 0.0),
        )
    newest = (
        select(Threshold.model_name, func.max(Threshold.version).label("version"))
        .group_by(Threshold.model_name)
        .subquery()
    )
    thresholds = conn.execute(
        select(Threshold.model_name, Threshold.warning, Threshold.critical, Threshold.version)
        .join(
            newest,
            (newest.c.model_name == Threshold.model_name) & (newest.c.version == Threshold.version),
        )
        .order_by(Threshold.model_name)
    ).all()
    out.family("anomaly_vae_threshold", "gauge", "Threshold in force.")
    for model, warning, critical, _ in thresholds:
        out.sample("anomaly_vae_threshold", {"model": model, "severity": "warning"}, warning)
        if critical is not None:
            out.sample("anomaly_vae_threshold", {"model": model, "severity": "critical"}, critical)
    out.family("anomaly_vae_threshold_version", "gauge", "Version of the threshold in force.")
    for model, _, _, version in thresholds:
        out.sample("anomaly_vae_threshold_version", {"model": model}, version)
    streams = [
        row
        for row in conn.execute(
            select(
                ScoringRun.id,
                Model.name,
                ScoringRun.lag,
                ScoringRun.latency_p50_ms,
                ScoringRun.latency_p99_ms,
                ScoringRun.records_per_s,
                ScoringRun.metrics_at,
            )
            .join(Model, Model.id == ScoringRun.model_id)
            .where(
                ScoringRun.kind == "stream",
                ScoringRun.status == "running",
                ScoringRun.metrics_at.is_not(None),
            )
            .order_by(ScoringRun.id)
        )
        if (now - row.metrics_at).total_seconds() <= STALE_METRICS_S
    ]
    gauges = (
        ("anomaly_vae_stream_lag_records", "Records behind the end of the topic.", "lag", 1.0),
        (
            "anomaly_vae_stream_latency_p50_seconds",
            "Median produce-to-database latency.",
            "latency_p50_ms",
            1e-3,
        ),
        (
            "anomaly_vae_stream_latency_p99_seconds",
            "99th percentile produce-to-database latency.",
            "latency_p99_ms",
            1e-3,
        ),
        ("anomaly_vae_stream_records_per_second", "Recent scoring rate.", "records_per_s", 1.0),
    )
    for name, help_text, attribute, scale in gauges:
        out.family(name, "gauge", help_text)
        for row in streams:
            value = getattr(row, attribute)
            if value is not None:
                out.sample(name, {"model": row.name, "run": str(row.id)}, value * scale)
    out.family(
        "anomaly_vae_stream_metrics_age_seconds", "gauge", "Seconds since the scorer reported."
    )
    for row in streams:
        out.sample(
            "anomaly_vae_stream_metrics_age_seconds",
            {"model": row.name, "run": str(row.id)},
            (now - row.metrics_at).total_seconds(),
        )
    _database_up(out, True)
    return out.text()


class _Exposition:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_text: str) -> None:
        self.lines.append(f"# HELP {name} {help_text}")
        self.lines.append(f"# TYPE {name} {kind}")

    def sample(self, name: str, labels: dict[str, Any], value: Any) -> None:
        text = ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items())
        number = float(value)
        shown = (
            "NaN"
            if math.isnan(number)
            else repr(number)
            if math.isfinite(number)
            else ("+Inf" if number > 0 else "-Inf")
        )
        self.lines.append(f"{name}{{{text}}} {shown}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")

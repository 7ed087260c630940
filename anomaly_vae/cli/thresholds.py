"""``thresholds`` and ``alerts``: see, preview, tune and set thresholds; act on alerts.

Every change is a new threshold version with who (``--by``, else the OS user), why
(``--reason``) and when; stored scores and past alerts are never rewritten. Policies:

* ``--value X``: a fixed threshold;
* ``--quantile Q`` / ``--false-alarm-rate R``: of the model's held-out normal scores;
* ``--contamination C``: the top C share of the model's stored scores (``--since``);
* ``--evt --risk P``: peaks over threshold (SPOT), P(normal score > threshold) = P.

``--critical`` takes the same choices as ``NAME=VALUE`` (or a bare number for a value):
``--critical 60``, ``--critical quantile=0.9999``, ``--critical evt=1e-6``.
"""

from __future__ import annotations

import getpass
import json
from dataclasses import replace
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from anomaly_vae.cli import app, setup_logging
from anomaly_vae.cli.db import (
    DB_HELP,
    ESCAPE_FORMULAS_HELP,
    PIPELINE_HELP,
    OutputFormat,
    ReportFormat,
    emit,
    parse_since,
    require_limit,
    require_model,
)
from anomaly_vae.errors import ConfigError

thresholds_app = typer.Typer(
    help="See, preview, tune and set alert thresholds (every change is a new version).",
    no_args_is_help=True,
)
alerts_app = typer.Typer(help="Alerts: list, acknowledge, resolve.", no_args_is_help=True)
app.add_typer(thresholds_app, name="thresholds")
app.add_typer(alerts_app, name="alerts")

MODEL_HELP = "Model name (the pipeline's name)."
CRITICAL_HELP = (
    "Critical level, the same choices as NAME=VALUE: 60 (a value), quantile=0.9999, "
    "false-alarm-rate=1e-5, contamination=0.001, evt=1e-6 (the risk)."
)


# What a new version changes, said after each one: it is not retroactive.
NOT_RETROACTIVE = (
    "  it applies to records scored from now on (running stream scorers within "
    "kafka.threshold_refresh_s); stored scores keep their is_anomaly / severity and past alerts "
    "stay, even when the same file is scored again: 'thresholds preview' replays stored scores "
    "under it"
)

# Options that several commands share, declared once.
ModelArg = Annotated[str, typer.Argument(help=MODEL_HELP)]
DbOpt = Annotated[str | None, typer.Option("--db", help=DB_HELP)]
PipelineOpt = Annotated[Path | None, typer.Option("--pipeline", help=PIPELINE_HELP)]
ValueOpt = Annotated[float | None, typer.Option("--value", help="A fixed threshold.")]
QuantileOpt = Annotated[
    float | None, typer.Option("--quantile", help="Quantile of held-out normal scores.")
]
FalseAlarmOpt = Annotated[
    float | None,
    typer.Option("--false-alarm-rate", help="Share of normal records that may cross."),
]
ContaminationOpt = Annotated[
    float | None,
    typer.Option("--contamination", help="Share of the stored scores (see --since) to flag."),
]
EvtOpt = Annotated[bool, typer.Option("--evt", help="Peaks over threshold (SPOT); needs --risk.")]
RiskOpt = Annotated[
    float | None, typer.Option("--risk", help="With --evt: P(normal score > threshold).")
]
InitialQuantileOpt = Annotated[
    float | None,
    typer.Option(
        "--initial-quantile",
        help="With --evt: the quantile of the normal scores above which the tail is fitted "
        "(default 0.98; lower it when there are too few scores above it).",
    ),
]
CriticalOpt = Annotated[str | None, typer.Option("--critical", help=CRITICAL_HELP)]
DebounceOpt = Annotated[
    str | None,
    typer.Option("--debounce", help="Alert rule: K/N, alert when K of the last N records cross."),
]
CooldownOpt = Annotated[
    str | None,
    typer.Option(
        "--cooldown",
        help="Alert rule: time between two alerts of an entity, in seconds (300) or with a "
        "unit (5m, 1h, 2d).",
    ),
]
KeyColumnOpt = Annotated[str, typer.Option("--key-column", help="The labels file's key column.")]
LabelsSepOpt = Annotated[str, typer.Option("--sep", help="The labels file's separator.")]
LabelsEncodingOpt = Annotated[
    str,
    typer.Option(
        "--encoding",
        help="The labels file's text encoding (cp1252 for an export 'score --encoding cp1252' "
        "read).",
    ),
]
ResolveAfterOpt = Annotated[
    int | None,
    typer.Option(
        "--resolve-after", help="Alert rule: normal records in a row that resolve an alert."
    ),
]


class Objective(str, Enum):
    f1 = "f1"


class AlertState(str, Enum):
    open = "open"
    acknowledged = "acknowledged"
    resolved = "resolved"
    active = "active"


# ================================================================== option parsing
def _policy(
    value: float | None,
    quantile: float | None,
    false_alarm_rate: float | None,
    contamination: float | None,
    evt: bool,
    risk: float | None,
    since: datetime | None,
    initial_quantile: float | None = None,
) -> Any:
    from anomaly_vae.storage.tuning import policy_spec

    given = [
        name
        for name, v in (
            ("--value", value),
            ("--quantile", quantile),
            ("--false-alarm-rate", false_alarm_rate),
            ("--contamination", contamination),
        )
        if v is not None
    ] + (["--evt"] if evt else [])
    if len(given) > 1:
        raise ConfigError(f"give one threshold policy, not {' and '.join(given)}")
    if risk is not None and not evt:
        raise ConfigError("--risk goes with --evt (peaks over threshold)")
    if initial_quantile is not None and not evt:
        raise ConfigError("--initial-quantile goes with --evt (peaks over threshold)")
    if value is not None:
        return policy_spec({"policy": "value", "value": value})
    if quantile is not None:
        return policy_spec({"policy": "quantile", "quantile": quantile})
    if false_alarm_rate is not None:
        return policy_spec({"policy": "false_alarm_rate", "rate": false_alarm_rate})
    if contamination is not None:
        return policy_spec(
            {"policy": "contamination", "contamination": contamination, "since": since}
        )
    if evt:
        if risk is None:
            raise ConfigError("--evt needs --risk P: the probability a normal score exceeds it")
        spec: dict[str, Any] = {"policy": "evt", "risk": risk}
        if initial_quantile is not None:
            spec["initial_quantile"] = initial_quantile
        return policy_spec(spec)
    return None


_CRITICAL_NAMES = {
    "value": ("value", "value"),
    "quantile": ("quantile", "quantile"),
    "false-alarm-rate": ("false_alarm_rate", "rate"),
    "false_alarm_rate": ("false_alarm_rate", "rate"),
    "contamination": ("contamination", "contamination"),
    "evt": ("evt", "risk"),
}


def _critical(text: str | None, since: datetime | None) -> Any:
    from anomaly_vae.storage.tuning import policy_spec

    if text is None:
        return None
    name, _, number = text.partition("=")
    if not number:
        name, number = "value", text
    key = name.strip().lower()
    if key not in _CRITICAL_NAMES:
        raise ConfigError(
            f"--critical {text!r}: expected NAME=VALUE with NAME one of "
            f"{', '.join(sorted(set(_CRITICAL_NAMES) - {'false_alarm_rate'}))}, "
            "or a number"
        )
    try:
        parsed = float(number)
    except ValueError:
        raise ConfigError(f"--critical {text!r}: {number!r} is not a number") from None
    policy, field = _CRITICAL_NAMES[key]
    data: dict[str, Any] = {"policy": policy, field: parsed}
    if policy == "contamination":
        data["since"] = since
    return policy_spec(data)


def _rule(
    current: dict[str, Any] | None,
    debounce: str | None,
    cooldown: str | None,
    resolve_after: int | None,
) -> Any:
    """The alert rule with the options given changed (None: no option given)."""
    from anomaly_vae.storage.tuning import alert_rule_of
    from anomaly_vae.thresholds import AlertRule

    if debounce is None and cooldown is None and resolve_after is None:
        return None
    data = AlertRule.from_dict(current).to_dict()
    if debounce is not None:
        k, sep, n = debounce.partition("/")
        if not sep or not k.strip().isdigit() or not n.strip().isdigit():
            raise ConfigError(f"--debounce {debounce!r}: write K/N, e.g. 2/3 (2 of the last 3)")
        data["k"], data["n"] = int(k), int(n)
    if cooldown is not None:
        data["cooldown_s"] = _cooldown_seconds(cooldown)
    if resolve_after is not None:
        data["resolve_after"] = resolve_after
    return alert_rule_of(data)


def _cooldown_seconds(text: str) -> float:
    """--cooldown: seconds (300, 0.5), or a duration with a unit as 'db prune --older-than'
    takes it (5m, 1h, 2d): '1h' was "Input should be a valid number"."""
    from anomaly_vae.cli.db import parse_age

    try:
        return float(text)
    except ValueError:
        pass
    try:
        return parse_age(text, "--cooldown").total_seconds()
    except ConfigError:
        raise ConfigError(
            f"--cooldown {text!r} is not a duration: give seconds (300) or a whole number and "
            "a unit, s, m, h, d or w (5m, 1h)"
        ) from None


def _since(text: str | None, option: str = "--since") -> datetime | None:
    return parse_since(text, option) if text else None


def _who(by: str | None) -> str:
    if by is not None:  # given: a blank one ('--by ""') is refused, not replaced by the user
        return by
    try:
        return getpass.getuser()
    except (KeyError, OSError):  # no user name (a container without /etc/passwd entry)
        return "unknown"


def _target(db: str | None, pipeline: Path | None) -> Any:
    from anomaly_vae.cli.db import database_target

    return database_target(db, pipeline)


def _threshold_dict(row: Any, *, json_form: bool = False) -> dict[str, Any]:
    """A threshold version for output. ``json_form``: the alert rule as its settings (``k``,
    ``n``, ``cooldown_s``, ``resolve_after``, as the HTTP API gives it) with the description
    beside it as ``alert_rule_text``; otherwise the description alone (tables, CSV)."""
    from anomaly_vae.thresholds import AlertRule

    rule = AlertRule.from_dict(row.alert_rule)
    out = {
        "id": row.id,
        "version": row.version,
        "policy": row.policy,
        "warning": row.warning,
        "critical": row.critical,
        "alert_rule": rule.to_dict() if json_form else rule.describe(),
        "created_at": row.created_at,
        "created_by": row.created_by,
        "reason": row.reason,
        "parameters": row.parameters,
    }
    if json_form:
        out["alert_rule_text"] = rule.describe()
    return out


# ====================================================================== thresholds
@thresholds_app.command("show")
def thresholds_show(
    model: ModelArg,
    fmt: ReportFormat = typer.Option(ReportFormat.table, "--format", help="table or json."),
    db: DbOpt = None,
    pipeline: PipelineOpt = None,
) -> None:
    """The threshold in force for MODEL, its alert rule, and what it means on normal data."""
    setup_logging(False)
    import numpy as np

    from anomaly_vae.cli.db import connected
    from anomaly_vae.storage import repository as repo
    from anomaly_vae.storage.tuning import model_in_use

    with connected(_target(db, pipeline)) as connection:
        version = model_in_use(connection, name=model)
        row = repo.threshold_in_force(connection, model_name=model)
        try:
            normal = repo.calibration_scores(connection, model_id=version.id)
        except ConfigError:
            normal = None
    if row is None:
        raise ConfigError(f"model {model!r} has no threshold yet: score with it, or set one")
    shown = _threshold_dict(row, json_form=fmt is ReportFormat.json)
    shown["model_version"] = version.version
    if normal is not None:
        shown["normal_false_alarm_rate"] = float(np.mean(normal > row.warning))
    if fmt is ReportFormat.json:
        # ISO 8601, as 'history --format json' and the API write it (str() gave a space)
        shown["created_at"] = row.created_at.isoformat()
        typer.echo(json.dumps(shown, default=str, indent=1))
        return
    critical = f", critical {row.critical:.6g}" if row.critical is not None else ""
    typer.echo(
        f"{model}: threshold v{row.version} in force ({row.policy}): "
        f"warning {row.warning:.6g}{critical}"
    )
    typer.echo(f"  alert rule: {shown['alert_rule']}")
    typer.echo(f"  set {_when(row.created_at)} by {row.created_by}: {row.reason}")
    if normal is not None:
        typer.echo(
            f"  on held-out normal data of model version {version.version}: "
            f"{100 * shown['normal_false_alarm_rate']:.3g} % of records cross it"
        )
    set_for = (row.parameters or {}).get("model_version")
    if set_for and set_for != version.version:
        # As 'score --db' and 'stream' warn of it (storage.sink.note_other_version).
        typer.echo(
            f"  note: set for model version {set_for}; the version in use is "
            f"{version.version}, whose scores have a scale of their own: set one for it "
            f"('anomaly-vae thresholds set {model} ... --reason ...')"
        )


@thresholds_app.command("history")
def thresholds_history(
    model: ModelArg,
    before_id: int | None = typer.Option(
        None,
        "--before-id",
        help="Only the versions after this id: the next page after the last shown.",
    ),
    limit: int = typer.Option(50, "--limit", help="At most this many versions."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv or json."),
    escape: bool = typer.Option(False, "--escape-formulas", help=ESCAPE_FORMULAS_HELP),
    db: DbOpt = None,
    pipeline: PipelineOpt = None,
) -> None:
    """Threshold versions of MODEL, newest (in force) first: who, why, when (--limit at a
    time; --before-id the last id shown for the next page)."""
    setup_logging(False)
    from anomaly_vae.cli.db import connected
    from anomaly_vae.storage import repository as repo

    require_limit(limit)
    with connected(_target(db, pipeline)) as connection:
        # not "no thresholds stored" for a misspelt name
        repo.registered_versions(connection, name=model, hint=": see 'anomaly-vae models list'")
        rows = [
            _threshold_dict(r, json_form=fmt is OutputFormat.json)
            for r in repo.list_thresholds(
                connection, model_name=model, limit=limit, before_id=before_id
            )
        ]
    columns = [
        "id",
        "version",
        "policy",
        "warning",
        "critical",
        "alert_rule",
        "created_at",
        "created_by",
        "reason",
    ]
    # The reason and the author are free text of whoever set the version (an API client).
    emit(
        rows,
        columns,
        fmt,
        empty=f"no thresholds stored for model {model!r}"
        + (f" before id {before_id}" if before_id is not None else ""),
        escape_formulas=escape,
    )
    if fmt is OutputFormat.table and len(rows) == limit:
        typer.echo(f"(more may follow: --before-id {rows[-1]['id']} shows the next page)")


@thresholds_app.command("set")
def thresholds_set(
    model: ModelArg,
    value: ValueOpt = None,
    quantile: QuantileOpt = None,
    false_alarm_rate: FalseAlarmOpt = None,
    contamination: ContaminationOpt = None,
    evt: EvtOpt = False,
    risk: RiskOpt = None,
    initial_quantile: InitialQuantileOpt = None,
    critical: CriticalOpt = None,
    no_critical: bool = typer.Option(False, "--no-critical", help="Drop the critical level."),
    debounce: DebounceOpt = None,
    cooldown: CooldownOpt = None,
    resolve_after: ResolveAfterOpt = None,
    since: str | None = typer.Option(
        None, "--since", help="With --contamination: stored scores from this date on."
    ),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the history)."),
    by: str | None = typer.Option(None, "--by", help="Who (default: your user name)."),
    db: DbOpt = None,
    pipeline: PipelineOpt = None,
) -> None:
    """Put a new threshold version in force (live scorers apply it within seconds). What is
    not given (critical level, alert rule) is carried over from the version in force."""
    setup_logging(False)
    from anomaly_vae.cli.db import connected
    from anomaly_vae.storage import repository as repo
    from anomaly_vae.storage.tuning import ThresholdChange, set_threshold

    start = _since(since)
    warning = _policy(
        value, quantile, false_alarm_rate, contamination, evt, risk, start, initial_quantile
    )
    critical_spec = _critical(critical, start)
    if critical_spec is not None and no_critical:
        raise ConfigError("give --critical or --no-critical, not both")
    if start is not None and "contamination" not in {
        getattr(warning, "policy", None),
        getattr(critical_spec, "policy", None),
    }:
        # Not ignored in silence: a threshold is in force from now on, whatever --since says.
        raise ConfigError(
            "--since goes with --contamination (or --critical contamination=C): the stored "
            "scores it is computed from; a new threshold is in force from now on"
        )
    with connected(_target(db, pipeline)) as connection, connection.begin():
        # The rule below is built on the version in force: nobody adds one until this commits.
        repo.lock_thresholds(connection, model_name=model)
        current = repo.threshold_in_force(connection, model_name=model)
        rule = _rule(current.alert_rule if current else None, debounce, cooldown, resolve_after)
        if warning is None and critical_spec is None and not no_critical and rule is None:
            raise ConfigError(
                "nothing to change: give a policy (--value, --quantile, --false-alarm-rate, "
                "--contamination, --evt --risk), --critical / --no-critical, or an alert rule "
                "option (--debounce, --cooldown, --resolve-after)"
            )
        written = set_threshold(
            connection,
            model_name=model,
            change=ThresholdChange(
                warning=warning, critical=critical_spec, clear_critical=no_critical, alert_rule=rule
            ),
            created_by=_who(by),
            reason=reason,
        )
    _say_written(model, written)
    if written.created:
        typer.echo(NOT_RETROACTIVE)


def _say_written(model: str, written: Any, *, rolled_back_to: int | None = None) -> None:
    """What a set or rollback did: the version it added, or that the one in force already
    had those settings (nothing added: a command run twice adds one version, not two)."""
    row = written.row
    shown = _threshold_dict(row)
    critical_text = f", critical {row.critical:.6g}" if row.critical is not None else ""
    levels = (
        f"({row.policy}): warning {row.warning:.6g}{critical_text}; alert rule "
        f"{shown['alert_rule']}"
    )
    if not written.created:
        what = (
            "these settings"
            if rolled_back_to is None
            else "them: it is the one in force"
            if rolled_back_to == row.version
            else f"the settings of v{rolled_back_to}"
        )
        typer.echo(
            f"{model}: unchanged, no new version: threshold v{row.version} {levels}; the "
            f"version in force already has {what}"
        )
        return
    of = f", the levels of v{rolled_back_to}" if rolled_back_to is not None else ""
    typer.echo(f"{model}: threshold v{row.version} in force{of} {levels}")


@thresholds_app.command("rollback")
def thresholds_rollback(
    model: ModelArg,
    to: int = typer.Option(
        ..., "--to", help="The threshold version to put back in force (see 'history')."
    ),
    reason: str = typer.Option(..., "--reason", help="Why (kept in the history)."),
    by: str | None = typer.Option(None, "--by", help="Who (default: your user name)."),
    db: DbOpt = None,
    pipeline: PipelineOpt = None,
) -> None:
    """Put an earlier threshold version back in force, as a new version: its levels (as they
    were, not recomputed), critical level and alert rule."""
    setup_logging(False)
    from anomaly_vae.cli.db import connected
    from anomaly_vae.storage.tuning import model_in_use, rollback_threshold

    with connected(_target(db, pipeline)) as connection, connection.begin():
        written = rollback_threshold(
            connection, model_name=model, to_version=to, created_by=_who(by), reason=reason
        )
        in_use = model_in_use(connection, name=model).version
    _say_written(model, written, rolled_back_to=to)
    if not written.created:
        return
    row = written.row
    computed_for = row.parameters.get("model_version")
    if computed_for is not None and computed_for != in_use:
        typer.echo(
            f"  note: v{to} was set for model version {computed_for}, the version in use "
            f"is {in_use}: check it with 'anomaly-vae thresholds show {model}'"
        )
    typer.echo(NOT_RETROACTIVE)


@thresholds_app.command("preview")
def thresholds_preview(
    model: ModelArg,
    value: ValueOpt = None,
    quantile: QuantileOpt = None,
    false_alarm_rate: FalseAlarmOpt = None,
    contamination: ContaminationOpt = None,
    evt: EvtOpt = False,
    risk: RiskOpt = None,
    initial_quantile: InitialQuantileOpt = None,
    critical: CriticalOpt = None,
    no_critical: bool = typer.Option(False, "--no-critical", help="Without a critical level."),
    debounce: DebounceOpt = None,
    cooldown: CooldownOpt = None,
    resolve_after: ResolveAfterOpt = None,
    since: str | None = typer.Option(
        None, "--since", help="Stored scores from this date or time on."
    ),
    until: str | None = typer.Option(
        None, "--until", help="Stored scores before this date or time."
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="Labels (see 'tune --help'): precision, recall, F1."
    ),
    label_column: str = typer.Option(
        "label", "--label-column", help="The labels file's label column."
    ),
    key_column: KeyColumnOpt = "source_key",
    sep: LabelsSepOpt = ",",
    encoding: LabelsEncodingOpt = "utf-8",
    plot: Path | None = typer.Option(
        None, "--plot", help="Also draw the preview to this PNG file."
    ),
    fmt: ReportFormat = typer.Option(ReportFormat.table, "--format", help="table or json."),
    db: DbOpt = None,
    pipeline: PipelineOpt = None,
) -> None:
    """What a threshold (and alert rule) would have done to the stored scores: records flagged,
    alerts per day and per entity, and precision / recall / F1 with --labels. Without a policy:
    the threshold in force (e.g. to try another alert rule)."""
    setup_logging(False)
    from anomaly_vae.cli.db import connected
    from anomaly_vae.storage import repository as repo
    from anomaly_vae.storage.tuning import ThresholdChange, preview_threshold, read_labels

    if plot is not None:  # before the work, not a traceback after it
        from anomaly_vae.plots import plot_path

        plot = plot_path(plot)
    start, end = _since(since), _since(until, "--until")
    if start is not None and end is not None and end <= start:
        raise ConfigError(f"--until {until} is not after --since {since}: no scores between them")
    warning = _policy(
        value, quantile, false_alarm_rate, contamination, evt, risk, start, initial_quantile
    )
    critical_spec = _critical(critical, start)
    label_set = (
        read_labels(
            labels,
            label_column=label_column,
            key_column=key_column,
            sep=sep,
            encoding=encoding,
        )
        if labels
        else None
    )
    with connected(_target(db, pipeline)) as connection:
        current = repo.threshold_in_force(connection, model_name=model)
        rule = _rule(current.alert_rule if current else None, debounce, cooldown, resolve_after)
        result = preview_threshold(
            connection,
            model_name=model,
            change=ThresholdChange(
                warning=warning, critical=critical_spec, clear_critical=no_critical, alert_rule=rule
            ),
            since=start,
            until=end,
            labels=label_set,
        )
        none_hint = (
            _no_scores_hint(connection, model, period=start is not None or end is not None)
            if result.result.records == 0
            else None
        )
    if plot is not None:
        from anomaly_vae.plots import preview_plot

        preview_plot(result, plot)
    summary = result.as_dict()
    if fmt is ReportFormat.json:
        typer.echo(json.dumps(summary, default=str, indent=1))
        return
    _print_preview(summary, plot)
    if none_hint:
        typer.echo(none_hint)


def _no_scores_hint(connection: Any, model: str, *, period: bool) -> str:
    """Why a preview replayed nothing: the model version in use has no stored scores, or
    none in the period asked for (with the period its scores cover)."""
    from sqlalchemy import func, select

    from anomaly_vae.storage.tables import Score
    from anomaly_vae.storage.tuning import model_in_use

    version = model_in_use(connection, name=model)
    when = func.coalesce(Score.event_time, Score.scored_at)
    count, first, last = connection.execute(
        select(func.count(), func.min(when), func.max(when)).where(Score.model_id == version.id)
    ).one()
    if not count:
        return (
            f"  model version {version.version} (in use) has no stored scores: score with it "
            "into this database first (score --db, stream)"
        )
    if not period:  # (cannot be: with no period every stored score is replayed)
        return ""
    from anomaly_vae.cli.db import _text

    return (
        f"  none in that period: the {count:,} stored scores of model version "
        f"{version.version} run from {_text(first)} to {_text(last)} (give --since / --until "
        "within that)"
    )


def _print_preview(summary: dict[str, Any], plot: Path | None) -> None:
    proposed, current = summary["proposed"], summary["current"]
    period = " since " + summary["since"] if summary["since"] else ""
    period += " until " + summary["until"] if summary["until"] else ""
    typer.echo(
        f"{summary['model']} (model version {summary['model_version']}), "
        f"{summary['records']:,} stored scores{period}"
    )
    from anomaly_vae.thresholds import AlertRule

    def levels(shown: dict[str, Any]) -> str:
        crit = f", critical {shown['critical']:.6g}" if shown["critical"] is not None else ""
        rule = AlertRule.from_dict(shown["alert_rule"]).describe()
        return f"warning {shown['warning']:.6g}{crit}; alert rule {rule}"

    # The rule too: a preview of --debounce / --cooldown / --resolve-after showed only levels.
    typer.echo(f"  proposed: {levels(proposed)}")
    if current is not None:
        typer.echo(f"  in force: {levels(current)}")
    typer.echo(
        f"  would flag {summary['flagged']:,} records and open {summary['alerts']:,} alerts "
        f"({summary['escalations']} escalated, {summary['resolutions']} resolved by the rule); "
        f"at the time: {summary['at_the_time']['flagged']:,} flagged, "
        f"{summary['at_the_time']['alerts']:,} alerts"
    )
    per_day = summary["alerts_per_day"]
    if per_day:
        days = ", ".join(f"{day} {n}" for day, n in list(per_day.items())[-14:])
        typer.echo(f"  alerts per day: {days}")
    per_entity = summary["alerts_per_entity"]
    if per_entity:
        top = sorted(per_entity.items(), key=lambda kv: -kv[1])[:10]
        typer.echo("  alerts per entity: " + ", ".join(f"{e or '(none)'} {n}" for e, n in top))
    metrics = summary["metrics"]
    if metrics:
        typer.echo(
            f"  on {summary['labelled_records']:,} labelled records: precision "
            f"{metrics['precision']:.3f}, recall {metrics['recall']:.3f}, F1 {metrics['f1']:.3f}, "
            f"false-alarm rate {metrics['false_alarm_rate']:.4f}"
        )
    if plot is not None:
        typer.echo(f"  plot: {plot}")


@thresholds_app.command("tune")
def thresholds_tune(
    model: ModelArg,
    labels: Path = typer.Option(
        ...,
        "--labels",
        help="CSV of labels: incident windows (entity,start,end), per-record labels "
        "(source_key,label or entity,time,label), or the scored export with its label column.",
    ),
    objective: Objective | None = typer.Option(None, "--objective", help="f1: the best F1."),
    max_false_alarm_rate: float | None = typer.Option(
        None, "--max-false-alarm-rate", help="The best recall with at most this false-alarm rate."
    ),
    alerts_per_day: float | None = typer.Option(
        None,
        "--alerts-per-day",
        help="The lowest threshold within this many flagged records a day.",
    ),
    label_column: str = typer.Option(
        "label", "--label-column", help="The labels file's label column."
    ),
    key_column: KeyColumnOpt = "source_key",
    sep: LabelsSepOpt = ",",
    encoding: LabelsEncodingOpt = "utf-8",
    since: str | None = typer.Option(
        None, "--since", help="Stored scores from this date or time on."
    ),
    apply: bool = typer.Option(
        False, "--apply", help="Put the tuned threshold in force (a new version)."
    ),
    reason: str | None = typer.Option(
        None, "--reason", help="With --apply: why (default: the tuning)."
    ),
    by: str | None = typer.Option(
        None, "--by", help="With --apply: who (default: your user name)."
    ),
    no_critical: bool = typer.Option(
        False,
        "--no-critical",
        help="With --apply: drop the critical level (kept from the version in force otherwise).",
    ),
    fmt: ReportFormat = typer.Option(ReportFormat.table, "--format", help="table or json."),
    db: DbOpt = None,
    pipeline: PipelineOpt = None,
) -> None:
    """The threshold that best fits labelled stored scores (and, with --apply, put it in force).

    Labels (CSV, by header): 'entity,start,end' incident windows (records of that entity,
    or of all when entity is empty, with event time in [start, end] are anomalous, the rest
    normal); 'source_key,label' per record; 'entity,time,label' per record by event time;
    otherwise the scored export file itself with its label column (rows keyed as 'score --db'
    stored them). A label is 1 / 0, true / false, anomaly / normal, fault / ok...; a blank cell
    is no label, -1 is refused."""
    setup_logging(False)
    from anomaly_vae.cli.db import connected
    from anomaly_vae.storage.tuning import read_labels, set_threshold, tune, tuned_change

    chosen = [
        name
        for name, v in (
            ("--objective", objective),
            ("--max-false-alarm-rate", max_false_alarm_rate),
            ("--alerts-per-day", alerts_per_day),
        )
        if v is not None
    ]
    if len(chosen) != 1:
        raise ConfigError(
            "give one objective: --objective f1, --max-false-alarm-rate R or --alerts-per-day N"
        )
    kind = (
        "f1"
        if objective is not None
        else "max_false_alarm_rate"
        if max_false_alarm_rate is not None
        else "alerts_per_day"
    )
    if not apply:  # not ignored in silence: nothing is put in force without --apply
        given = [
            name
            for name, v in (
                ("--reason", reason),
                ("--by", by),
                ("--no-critical", no_critical or None),
            )
            if v is not None
        ]
        if given:
            raise ConfigError(
                f"{' and '.join(given)} go{'es' if len(given) == 1 else ''} with --apply: "
                "add --apply to put the tuned threshold in force"
            )
    label_set = read_labels(
        labels,
        label_column=label_column,
        key_column=key_column,
        sep=sep,
        encoding=encoding,
    )
    with connected(_target(db, pipeline)) as connection, connection.begin():
        tuned = tune(
            connection,
            model_name=model,
            labels=label_set,
            objective=kind,  # type: ignore[arg-type]
            max_false_alarm_rate=max_false_alarm_rate,
            alerts_per_day=alerts_per_day,
            since=_since(since),
        )
        applied = None
        if apply:
            applied = set_threshold(
                connection,
                model_name=model,
                change=replace(tuned_change(tuned, labels=label_set), clear_critical=no_critical),
                created_by=_who(by),
                # an empty --reason is refused as in 'set', not replaced by this one
                reason=reason if reason is not None else f"tuned on {labels.name} ({kind})",
            )
    out = tuned.as_dict()
    if applied is not None:
        out["applied_version"] = applied.row.version
        # False: the version in force already had this threshold (tuned again, the same result)
        out["new_version"] = applied.created
    if fmt is ReportFormat.json:
        typer.echo(json.dumps(out, default=str, indent=1))
        return
    per_day = (
        f", {out['alerts_per_day']:.3g} flagged a day" if out["alerts_per_day"] is not None else ""
    )
    typer.echo(
        f"{model}: tuned threshold {tuned.value:.6g} ({kind}) on {tuned.labelled:,} labelled "
        f"records: precision {out['precision']:.3f}, recall {out['recall']:.3f}, F1 "
        f"{out['f1']:.3f}, false-alarm rate {out['false_alarm_rate']:.4f}{per_day}"
    )
    if applied is not None and not applied.created:
        typer.echo(
            f"  unchanged: threshold v{applied.row.version} in force already has it; no new "
            "version added"
        )
    elif applied is not None:
        typer.echo(f"  now in force as threshold v{applied.row.version}")
        typer.echo(NOT_RETROACTIVE)
    else:
        typer.echo("  not applied: add --apply to put it in force")


# ========================================================================= alerts
@alerts_app.command("list")
def alerts_list(
    state: AlertState | None = typer.Option(
        None, "--state", help="open, acknowledged, resolved, or active (open or acknowledged)."
    ),
    model: str | None = typer.Option(None, "--model", help="Only this model name."),
    entity: str | None = typer.Option(None, "--entity", help="Only this entity."),
    since: str | None = typer.Option(None, "--since", help="Opened from this date or time on."),
    until: str | None = typer.Option(None, "--until", help="Opened before this date or time."),
    before_id: int | None = typer.Option(
        None,
        "--before-id",
        help="Only the alerts after this id: the next page after the last shown.",
    ),
    limit: int = typer.Option(50, "--limit", help="At most this many alerts."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table, csv or json."),
    escape: bool = typer.Option(False, "--escape-formulas", help=ESCAPE_FORMULAS_HELP),
    db: DbOpt = None,
    pipeline: PipelineOpt = None,
) -> None:
    """Alerts, newest first."""
    setup_logging(False)
    from anomaly_vae.cli.db import connected, entity_case_hint
    from anomaly_vae.storage.tuning import list_alerts

    require_limit(limit)
    with connected(_target(db, pipeline)) as connection:
        require_model(connection, model)
        rows = list_alerts(
            connection,
            state=state.value if state else None,
            model_name=model,
            entity=entity,
            since=_since(since),
            until=_since(until, "--until"),
            limit=limit,
            before_id=before_id,
        )
        empty = "no alerts found"
        if not rows and entity is not None:
            empty += entity_case_hint(connection, entity, alerts=True)
    columns = [
        "id",
        "state",
        "severity",
        "model",
        "entity_key",
        "onset_time",
        "time",
        "score",
        "opened_at",
        "acknowledged_by",
        "resolved_by",
        "source_key",
    ]
    if fmt is not OutputFormat.table:
        # What the API gives too: when each action was taken and the alert's threshold version
        # (its id, as 'thresholds history' shows it).
        columns += ["acknowledged_at", "resolved_at", "escalated_at", "threshold_id"]
    # The acknowledger's and resolver's notes: kept with the alert, and shown nowhere else
    # on the command line (a table shows it on one line, last).
    columns.append("note")
    emit(rows, columns, fmt, empty=empty, escape_formulas=escape)


def _act(
    alert_id: int,
    action: Literal["acknowledge", "resolve"],
    by: str | None,
    note: str | None,
    db: str | None,
    pipeline: Path | None,
) -> None:
    setup_logging(False)
    from anomaly_vae.cli.db import connected
    from anomaly_vae.storage.tuning import act_on_alert

    with connected(_target(db, pipeline)) as connection, connection.begin():
        acted = act_on_alert(connection, alert_id=alert_id, action=action, by=_who(by), note=note)
    row = acted.row
    if not acted.changed:  # the same action by the same operator, repeated: no error
        typer.echo(f"{acted.message} ({row.entity_key or 'no entity'}, {row.severity})")
        return
    typer.echo(
        f"alert {row.id} ({row.entity_key or 'no entity'}, {row.severity}) is now {row.state}"
    )


@alerts_app.command("ack")
def alerts_ack(
    alert_id: int = typer.Argument(..., help="Alert id (see 'alerts list')."),
    by: str | None = typer.Option(None, "--by", help="Who (default: your user name)."),
    note: str | None = typer.Option(None, "--note", help="A note kept with the alert."),
    db: DbOpt = None,
    pipeline: PipelineOpt = None,
) -> None:
    """Acknowledge an open alert (it stays in progress until resolved)."""
    _act(alert_id, "acknowledge", by, note, db, pipeline)


@alerts_app.command("resolve")
def alerts_resolve(
    alert_id: int = typer.Argument(..., help="Alert id (see 'alerts list')."),
    by: str | None = typer.Option(None, "--by", help="Who (default: your user name)."),
    note: str | None = typer.Option(None, "--note", help="A note kept with the alert."),
    db: DbOpt = None,
    pipeline: PipelineOpt = None,
) -> None:
    """Resolve an alert (the entity's next crossings may open a new one)."""
    _act(alert_id, "resolve", by, note, db, pipeline)


def _when(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%SZ")

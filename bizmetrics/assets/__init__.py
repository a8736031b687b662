"""The operations kit: Prometheus rules, Grafana dashboards and an Alertmanager example.

``python -m bizmetrics export-assets DIR`` writes them out, tuned by its
options; see the documentation's operations kit (``docs/operations/index.md``).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from .._settings import valid_namespace

__all__ = [
    "DEFAULT_JOBS",
    "DEFAULT_MIN_EVENTS",
    "DEFAULT_RUNBOOK_URL",
    "MANIFEST",
    "RULE_FILES",
    "THRESHOLDS",
    "Export",
    "export",
    "parse_duration",
    "parse_options",
    "read_manifest",
    "render",
    "runbook_url",
    "set_objectives",
    "tune_alerts",
    "with_namespace",
    "with_runbook_url",
]

#: The rule files, in the order Prometheus should load them.
RULE_FILES = (
    "recording_rules.yml",
    "alerting_rules.yml",
    "slo_rules.yml",
    "cost_rules.yml",
    "clients_rules.yml",
    "job_rules.yml",
    "anomaly_rules.yml",
)

#: The scrape jobs the target-down alert and the dashboards cover by default: all of them.
DEFAULT_JOBS = ".+"

#: Events a window must hold before a ratio or burn-rate alert of a job fires (``--min-events``).
DEFAULT_MIN_EVENTS = 50

#: Where the shipped alerts' ``runbook_url`` annotations point: the published documentation
#: (``export-assets --runbook-url BASE`` points them at a team's own copy).
DEFAULT_RUNBOOK_URL = "https://bizmetrics.readthedocs.io/en/latest"
#: The runbook page, relative to the documentation's base; each alert is an anchor on it.
RUNBOOK_PAGE = "operations/runbook.html"
_RUNBOOK_BASE = re.compile(r"https?://[^\s\"'#?{}<>\\]+")

#: Tunable alert thresholds: option name -> (alert, shipped value).
THRESHOLDS: dict[str, tuple[str, float]] = {
    "connector-error-ratio": ("BizmetricsConnectorErrorRatioHigh", 0.05),
    "connector-error-ratio-critical": ("BizmetricsConnectorErrorRatioCritical", 0.25),
    "workflow-failure-ratio": ("BizmetricsWorkflowFailureRatioHigh", 0.1),
    "api-5xx-ratio": ("BizmetricsApi5xxRatioHigh", 0.05),
}

_STALE_ALERT = "BizmetricsBatchJobStale"
_SHIPPED_STALE = ("93600", "26h")
_SHIPPED_JOBS_EXPR = "expr: 'up{job=~\".+\"} == 0'"
_OBJECTIVE = re.compile(
    r"(      - record: job:bizmetrics_slo_objective:ratio\n        expr: )(.+)(\n        labels:\n          slo: )"
    r"(connector|api)\n",
)
_OBJECTIVE_METRIC = {"connector": "connector_operations_total", "api": "api_requests_total"}
# Prometheus' own grammar (prometheus/common model.ParseDuration): each unit at most once, in this order.
_UNITS = (("y", 31536000000), ("w", 604800000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000), ("ms", 1))
# [0-9], not \d: Prometheus takes ASCII digits only, and \d matches every script's digits.
_DURATION = re.compile("".join(rf"(?:([0-9]+){unit})?" for unit, _ in _UNITS))
_MAX_MS = (2**63 - 1) // 1_000_000  # Prometheus holds durations as int64 nanoseconds


def parse_duration(text: str) -> float:
    """Return the seconds of a Prometheus duration such as ``26h``, ``1h30m`` or ``0s``.

    Exactly Prometheus' syntax: units ``y w d h m s ms``, in that order, each
    at most once, with a whole number before each (``30s2m`` and ``1h1h``
    are refused, as Prometheus refuses them); ``0`` alone is zero.

    :param text: the duration, in Prometheus' syntax.
    :raises ValueError: if ``text`` is not a Prometheus duration.

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 exactly Prometheus' grammar: zero is a duration; units out of order or repeated are not.
    """
    if text == "0":
        return 0.0
    match = _DURATION.fullmatch(text) if text else None
    if match is None or not any(match.groups()):
        raise ValueError(
            f"{text!r} is not a Prometheus duration: whole numbers with the units y, w, d, h, m, s, ms, "
            "in that order, each at most once (like 90s, 15m, 26h or 1h30m)"
        )
    ms = sum(int(n) * unit_ms for n, (_, unit_ms) in zip(match.groups(), _UNITS, strict=True) if n)
    if ms > _MAX_MS:
        raise ValueError(f"the duration {text!r} is longer than Prometheus can hold (about 292 years)")
    return ms / 1000


def runbook_url(alert: str, base: str = DEFAULT_RUNBOOK_URL) -> str:
    """Return the URL of ``alert``'s runbook entry under the documentation at ``base``.

    The entry's anchor is the alert's name lowercased
    (``.../operations/runbook.html#bizmetricstargetdown``).

    .. versionadded:: 0.3.0
    """
    return f"{base.rstrip('/')}/{RUNBOOK_PAGE}#{alert.lower()}"


def with_runbook_url(text: str, base: str | None) -> str:
    """Return rules ``text`` with every alert's ``runbook_url`` pointing under ``base`` instead of the default.

    :raises ValueError: unless ``base`` is an http(s) URL without spaces, quotes, a query or a fragment.

    .. versionadded:: 0.3.0
    """
    if base is None:
        return text
    if not _RUNBOOK_BASE.fullmatch(base):
        raise ValueError(f"--runbook-url {base!r} is not an http(s) URL without spaces, quotes, query or fragment")
    shipped = f"runbook_url: {DEFAULT_RUNBOOK_URL}/{RUNBOOK_PAGE}#"
    return text.replace(shipped, f"runbook_url: {base.rstrip('/')}/{RUNBOOK_PAGE}#")


def _promql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _yaml_single_quoted(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def check_jobs_regex(jobs: str) -> None:
    """Raise ``ValueError`` unless ``jobs`` is a regex Prometheus (RE2) accepts.

    .. versionadded:: 0.2.0
    """
    try:
        re.compile(jobs)
    except re.error as exc:
        raise ValueError(f"--jobs {jobs!r} is not a regex: {exc}") from None
    # RE2, Prometheus' regex engine, has no lookaround and no backreferences.
    if re.search(r"\(\?<?[=!]|\\[1-9]", jobs):
        raise ValueError(f"--jobs {jobs!r}: Prometheus regexes (RE2) have no lookaround or backreferences")


def _check_ratio(what: str, value: float) -> None:
    if not 0 < value < 1:
        raise ValueError(f"{what} must be between 0 and 1 (exclusive), not {value}")


def set_objectives(
    slo_rules: str,
    *,
    connector: float | Mapping[str | None, float] | None = None,
    api: float | Mapping[str | None, float] | None = None,
) -> str:
    """Return ``slo_rules`` with the connector and/or API objectives replaced.

    An objective is a success ratio strictly between 0 and 1 (0.995 is 99.5%).
    A mapping sets objectives per job; its ``None`` key sets the default of
    every other job.

    :param slo_rules: the text of ``slo_rules.yml``.
    :param connector: the connector objective, or objectives by job.
    :param api: the API objective, or objectives by job.
    :raises ValueError: if an objective is out of range.

    .. versionadded:: 0.2.0
    """
    wanted: dict[str, dict[str | None, float]] = {}
    for name, value in (("connector", connector), ("api", api)):
        if value is None:
            continue
        by_job: dict[str | None, float] = {None: value} if isinstance(value, (int, float)) else dict(value)
        for job, objective in by_job.items():
            _check_ratio(f"the {name} objective" + (f" of job {job!r}" if job else ""), objective)
        wanted[name] = by_job

    def replace(match: re.Match[str]) -> str:
        slo = match.group(4)
        if slo not in wanted:
            return match.group(0)
        by_job = wanted[slo]
        default = by_job.get(None)
        if default is None:
            default = float(match.group(2).split(" ", 1)[0])
        expr = f"{default!r} * group by (job) ({_OBJECTIVE_METRIC[slo]})"
        overrides = [
            f'label_replace(vector({value!r}), "job", {_promql_string(job)}, "", "")'
            for job, value in sorted((j, v) for j, v in by_job.items() if j is not None)
        ]
        if overrides:
            expr = _yaml_single_quoted(" or ".join([*overrides, expr]))
        return f"{match.group(1)}{expr}{match.group(3)}{slo}\n"

    text, found = _OBJECTIVE.subn(replace, slo_rules)
    if found != 2:
        raise ValueError("slo_rules.yml does not hold the two objectives where expected")
    return text


def _alert_block(text: str, alert: str) -> tuple[int, int]:
    start = text.find(f"      - alert: {alert}\n")
    if start < 0:
        raise ValueError(f"no alert {alert} in the rules")
    end = text.find("\n      - ", start + 1)
    return start, len(text) if end < 0 else end


def _replace_in_alert(text: str, alert: str, old: str, new: str) -> str:
    start, end = _alert_block(text, alert)
    block = text[start:end]
    if block.count(old) != 1:
        raise ValueError(f"alert {alert} does not hold {old!r} once")
    return text[:start] + block.replace(old, new) + text[end:]


def _percent(ratio: float) -> str:
    return f"{ratio * 100:g}%"


def tune_alerts(
    alerting_rules: str,
    *,
    jobs: str | None = None,
    thresholds: Mapping[str, float] | None = None,
    batch_stale_after: str | None = None,
    for_durations: Mapping[str, str] | None = None,
) -> str:
    """Return ``alerting_rules`` with the jobs, thresholds, staleness window and ``for:`` durations replaced.

    :param alerting_rules: the text of ``alerting_rules.yml`` (or, for ``for_durations`` only, ``slo_rules.yml``).
    :param jobs: regex of the scrape jobs ``BizmetricsTargetDown`` covers.
    :param thresholds: new values by :data:`THRESHOLDS` name.
    :param batch_stale_after: how old a batch job's last success may get, as a Prometheus duration.
    :param for_durations: new ``for:`` durations by alert name.
    :raises ValueError: for an unknown name or an invalid value.

    .. versionadded:: 0.2.0
    """
    text = alerting_rules
    if jobs is not None:
        check_jobs_regex(jobs)
        new = "expr: " + _yaml_single_quoted(f"up{{job=~{_promql_string(jobs)}}} == 0")
        text = _replace_in_alert(text, "BizmetricsTargetDown", _SHIPPED_JOBS_EXPR, new)
    for name, value in (thresholds or {}).items():
        if name not in THRESHOLDS:
            raise ValueError(f"unknown threshold {name!r}; known: {', '.join(THRESHOLDS)}")
        alert, shipped = THRESHOLDS[name]
        _check_ratio(f"the {name} threshold", value)
        text = _replace_in_alert(text, alert, f"> {shipped!r}\n", f"> {value!r}\n")
        text = _replace_in_alert(text, alert, f"More than {_percent(shipped)} ", f"More than {_percent(value)} ")
    if batch_stale_after is not None:
        seconds = parse_duration(batch_stale_after)
        if seconds <= 0:
            raise ValueError(f"--batch-stale-after {batch_stale_after!r} must be longer than zero")
        text = _replace_in_alert(text, _STALE_ALERT, f"> {_SHIPPED_STALE[0]}\n", f"> {seconds:g}\n")
        text = _replace_in_alert(
            text, _STALE_ALERT, f"more than {_SHIPPED_STALE[1]} ago", f"more than {batch_stale_after} ago"
        )
    for alert, duration in (for_durations or {}).items():
        parse_duration(duration)
        start, end = _alert_block(text, alert)
        block = text[start:end]
        current = re.search(r"\n        for: (\S+)\n", block)
        if current is None:
            raise ValueError(f"alert {alert} has no for: duration")
        # The description, when it states the duration, says it the way `for:` does.
        block = block.replace(current.group(0), f"\n        for: {duration}\n").replace(
            f" for {current.group(1)}.", f" for {duration}."
        )
        text = text[:start] + block + text[end:]
    return text


def _pairs(values: list[str], what: str) -> dict[str, str]:
    pairs = {}
    for value in values:
        name, sep, rest = value.partition("=")
        if not sep or not name or not rest:
            raise ValueError(f"{what} must look like NAME=VALUE, not {value!r}")
        pairs[name] = rest
    return pairs


def _by_job(values: list[str], option: str, kind: type[float] | type[int] = float) -> dict[str | None, Any] | None:
    """``[JOB=]VALUE`` options: the value without a job is the default of every job."""
    by_job: dict[str | None, Any] = {}
    for value in values:
        job, sep, number = value.rpartition("=")
        try:
            by_job[job if sep else None] = kind(number)
        except ValueError:
            what = "RATIO" if option.endswith("objective") else "N" if kind is int else "MS"
            raise ValueError(f"--{option} must be {what} or JOB={what}, not {value!r}") from None
        if sep and not job:
            raise ValueError(f"--{option} {value!r} names no job")
    return by_job or None


def _option(slo: str) -> str:
    return slo.replace("_", "-")


def parse_options(
    *,
    jobs: str | None,
    connector_objective: list[str],
    api_objective: list[str],
    thresholds: Mapping[str, float | None],
    batch_stale_after: str | None,
    for_durations: list[str],
    objectives: Mapping[str, list[str]] | None = None,
    latency_thresholds: Mapping[str, list[str]] | None = None,
    min_events: list[str] | None = None,
) -> dict[str, Any]:
    """Return :func:`render`'s keyword arguments from ``export-assets``' command line values.

    ``objectives`` and ``latency_thresholds`` hold the ``--SLO-objective`` and
    ``--SLO-threshold`` values by SLO name, ``min_events`` the ``--min-events`` ones.

    :raises ValueError: for a malformed value.

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 ``objectives``, ``latency_thresholds`` and ``min_events``.
    """
    chosen: dict[str, Any] = {}
    for slo, values in (objectives or {}).items():
        parsed = _by_job(values, f"{_option(slo)}-objective")
        if parsed:
            chosen[slo] = parsed
    latency: dict[str, Any] = {}
    for slo, values in (latency_thresholds or {}).items():
        parsed = _by_job(values, f"{_option(slo)}-threshold")
        if parsed:
            latency[slo] = parsed
    return {
        "jobs": jobs,
        "connector_objective": _by_job(connector_objective, "connector-objective"),
        "api_objective": _by_job(api_objective, "api-objective"),
        "objectives": chosen or None,
        "latency_thresholds": latency or None,
        "min_events": _by_job(min_events or [], "min-events", int),
        "thresholds": {name: value for name, value in thresholds.items() if value is not None},
        "batch_stale_after": batch_stale_after,
        "for_durations": _pairs(for_durations, "--for"),
    }


def with_namespace(text: str, namespace: str | None) -> str:
    """Return ``text`` (rules or a dashboard) with every catalogue metric prefixed by ``namespace_``.

    The names a service exposes with ``BIZMETRICS_NAMESPACE``; recording rule
    names, labels and the ``bizmetrics_`` self-metrics are left as they are.

    .. versionadded:: 0.2.0
    """
    if not namespace:
        return text
    from ..metrics import BASE_NAMES

    bases = sorted({name.removesuffix("_total") for name in BASE_NAMES}, key=len, reverse=True)
    names = "|".join(bases)
    pattern = re.compile(rf"(?<![\w:])((?:{names})(?:_total|_bucket|_sum|_count|_created)?)(?![\w:])")
    return pattern.sub(lambda match: f"{namespace}_{match.group(1)}", text)


def render(
    *,
    jobs: str | None = None,
    connector_objective: float | Mapping[str | None, float] | None = None,
    api_objective: float | Mapping[str | None, float] | None = None,
    thresholds: Mapping[str, float] | None = None,
    batch_stale_after: str | None = None,
    for_durations: Mapping[str, str] | None = None,
    namespace: str | None = None,
    objectives: Mapping[str, float | Mapping[str | None, float]] | None = None,
    latency_thresholds: Mapping[str, float | Mapping[str | None, float]] | None = None,
    min_events: int | Mapping[str | None, int] | None = None,
    runbook_url: str | None = None,
) -> dict[str, str]:
    """Return every file of the kit, tuned, by its path relative to the export directory.

    With no argument, the files are exactly the shipped ones.  ``for_durations``
    may name any alert, SLO alerts included; ``namespace`` writes the rules and
    dashboards for a service run with ``BIZMETRICS_NAMESPACE`` (see
    :func:`with_namespace`); ``objectives`` (by SLO name), ``latency_thresholds``
    (by latency SLO name, in ms, each a bucket bound of the SLO's histogram) and
    ``min_events`` are those of :func:`bizmetrics.assets.slo.build`, each a
    value or values by job (the ``None`` key: every other job); the other
    parameters are those of :func:`tune_alerts`.  ``runbook_url`` is the base
    of the documentation the alerts' ``runbook_url`` annotations point into
    (default :data:`DEFAULT_RUNBOOK_URL`; see :func:`with_runbook_url`).

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 ``objectives``, ``latency_thresholds``, ``min_events`` and ``runbook_url``.
    """
    from . import anomaly, slo

    package = resources.files(__name__)
    texts = {name: package.joinpath("prometheus").joinpath(name).read_text(encoding="utf-8") for name in RULE_FILES}
    every_objective = dict(objectives or {})
    for name, value in (("connector", connector_objective), ("api", api_objective)):
        if value is not None:
            every_objective[name] = value
    texts["anomaly_rules.yml"] = anomaly.build()
    texts["slo_rules.yml"] = slo.build(objectives=every_objective, thresholds=latency_thresholds, min_events=min_events)
    durations: dict[str, dict[str, str]] = {name: {} for name in RULE_FILES}
    for alert, duration in (for_durations or {}).items():
        holder = [name for name, text in texts.items() if f"- alert: {alert}\n" in text]
        if not holder:
            raise ValueError(f"no alert {alert} in the rules")
        durations[holder[0]][alert] = duration
    files: dict[str, str] = {}
    for name, text in texts.items():
        if name == "alerting_rules.yml":
            text = tune_alerts(text, jobs=jobs, thresholds=thresholds, batch_stale_after=batch_stale_after)
        text = tune_alerts(text, for_durations=durations[name])
        files[f"prometheus/{name}"] = with_runbook_url(text, runbook_url)
    from . import dashboards  # not at import time: ``python -m bizmetrics.assets.dashboards`` runs it as __main__

    for name, build in dashboards.DASHBOARDS.items():
        files[f"grafana/{name}"] = dashboards.render(build, jobs=DEFAULT_JOBS if jobs is None else jobs)
    files["alertmanager/alertmanager.yml"] = (
        package.joinpath("alertmanager").joinpath("alertmanager.yml").read_text(encoding="utf-8")
    )
    if namespace:
        if not valid_namespace(namespace):
            raise ValueError(f"--namespace {namespace!r} is not a valid metric name prefix")
        files = {name: with_namespace(text, namespace) for name, text in files.items()}
        for name, text in files.items():
            if name.startswith("grafana/"):
                # Their own identity, so they sit beside the unprefixed dashboards in one Grafana.
                board = json.loads(text)
                board["uid"] = namespaced_uid(board["uid"], namespace)
                board["title"] = f"{board['title']} ({namespace})"
                files[name] = json.dumps(board, indent=2, sort_keys=True) + "\n"
    return files


#: Grafana's longest dashboard uid.
MAX_UID = 40
_UID_SAFE = re.compile(r"[A-Za-z0-9_]+")


def namespaced_uid(uid: str, namespace: str) -> str:
    """Return the uid of dashboard ``uid`` for ``namespace``: at most 40 characters, stable, its own per namespace.

    ``UID-NAMESPACE`` when it fits and the namespace has only characters a
    uid may have; otherwise cut, with ``--`` and 8 hex digits of the
    namespace's SHA-256 at the end, so namespaces that share their first
    characters (``checkout_eu``, ``checkout_us``) keep distinct uids.  The
    shipped uids and namespaces have no ``--``, so a cut uid never equals a
    whole one.

    .. versionadded:: 0.3.0
    """
    full = f"{uid}-{namespace}"
    if len(full) <= MAX_UID and _UID_SAFE.fullmatch(namespace):
        return full
    digest = hashlib.sha256(namespace.encode()).hexdigest()[:8]
    return f"{full[: MAX_UID - len(digest) - 2].replace(':', '_')}--{digest}"


#: The file in an export directory that records how it was made (see :func:`export`).
MANIFEST = "bizmetrics-assets.json"


@dataclass
class Export:
    """What :func:`export` did with each file.

    .. versionadded:: 0.2.0
    """

    #: Files written (new, regenerated from an earlier export, or overwritten with ``force``).
    written: list[Path] = field(default_factory=list)
    #: Files that already held exactly what would be written.
    unchanged: list[Path] = field(default_factory=list)
    #: Files left alone: edited by hand since the last export (or not made by one) and ``force`` was not given.
    kept: list[Path] = field(default_factory=list)


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def read_manifest(directory: str | Path) -> dict[str, Any] | None:
    """The manifest of an earlier :func:`export` to ``directory``, or ``None`` if there is none.

    It holds ``options`` (what produced the files, as ``export-assets`` options, when
    the command line made them), ``files`` (each file's SHA-256 as written) and the
    ``bizmetrics`` version that wrote it.

    :raises ValueError: the manifest is not one :func:`export` writes.

    .. versionadded:: 0.3.0
    """
    path = Path(directory) / MANIFEST
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise ValueError(f"{path} is not a bizmetrics export manifest: {exc}") from None
    if not (
        isinstance(data, dict)
        and isinstance(data.get("files", {}), dict)
        and all(isinstance(v, str) for v in data.get("files", {}).values())
        and isinstance(data.get("options", {}), dict)
    ):
        raise ValueError(f"{path} is not a bizmetrics export manifest (remove it to start afresh)")
    return data


def export(
    directory: str | Path,
    files: Mapping[str, str] | None = None,
    *,
    force: bool = False,
    options: Mapping[str, Any] | None = None,
) -> Export:
    """Write the kit to ``DIR/prometheus``, ``DIR/grafana`` and ``DIR/alertmanager``.

    Beside them goes a manifest (:data:`MANIFEST`) with each file's digest, so a
    later export regenerates the files it wrote itself and leaves alone, listed in
    :attr:`Export.kept`, a file edited by hand since (or not written by an export),
    unless ``force``.

    :param directory: where to write.
    :param files: what :func:`render` returned (default: the shipped files).
    :param force: overwrite files edited by hand.
    :param options: the ``export-assets`` options that produced ``files``, kept in the
        manifest so that a re-run without options makes the same files.

    .. versionadded:: 0.2.0
    .. versionchanged:: 0.3.0 writes a manifest; regenerates files that an earlier export wrote.
    """
    from .. import __version__

    root = Path(directory)
    earlier = read_manifest(root) or {}
    ours: dict[str, str] = earlier.get("files", {})
    digests: dict[str, str] = {}
    done = Export()
    for relative, text in (render() if files is None else files).items():
        path = root / relative
        if path.exists():
            current = path.read_text(encoding="utf-8")
            if current == text:
                done.unchanged.append(path)
                digests[relative] = _digest(text)
                continue
            if not force and ours.get(relative) != _digest(current):
                done.kept.append(path)
                if relative in ours:
                    digests[relative] = ours[relative]
                continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        done.written.append(path)
        digests[relative] = _digest(text)
    manifest: dict[str, Any] = {"bizmetrics": __version__, "files": dict(sorted(digests.items()))}
    if options is not None:
        manifest["options"] = dict(options)
    root.mkdir(parents=True, exist_ok=True)
    (root / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return done

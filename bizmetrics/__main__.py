"""Command line: ``python -m bizmetrics demo``."""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from . import __version__


def _port(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number (0 to 65535; 0 picks a free port)")
    return port


def _seconds(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return seconds


# Export arguments that are not options of the assets: never recorded in the manifest.
_NOT_RECORDED = {"help", "directory", "force", "defaults", "command"}


def _recorded(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {
        action.option_strings[-1]: action
        for action in parser._actions
        if action.option_strings and action.dest not in _NOT_RECORDED
    }


def _as_args(options: dict[str, Any]) -> str:
    words = []
    for option, value in sorted(options.items()):
        for one in value if isinstance(value, list) else [value]:
            words.append(f"{option} {one:g}" if isinstance(one, float) else f"{option} {one}")
    return " ".join(words) or "(none: the shipped settings)"


def _export_assets(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from .assets import MANIFEST, THRESHOLDS, parse_options, read_manifest, render
    from .assets import export as export_assets
    from .assets.slo import SLOS

    recorded = _recorded(parser)
    given = {
        option: getattr(args, action.dest)
        for option, action in recorded.items()
        if getattr(args, action.dest) not in (action.default, [])
    }
    manifest_path = f"{args.directory}/{MANIFEST}"
    try:
        saved = (read_manifest(args.directory) or {}).get("options")
    except ValueError as exc:
        print(f"bizmetrics export-assets: {exc}", file=sys.stderr)
        return 1
    if saved and not given and not args.defaults:
        unknown = sorted(set(saved) - set(recorded))
        if unknown:
            print(
                f"bizmetrics export-assets: {manifest_path} records options this version does not know"
                f" ({', '.join(unknown)}): give the options, or --defaults",
                file=sys.stderr,
            )
            return 1
        for option, value in saved.items():
            setattr(args, recorded[option].dest, value)
        given = saved
        print(f"bizmetrics export-assets: the options of the last export: {_as_args(saved)}", file=sys.stderr)
    elif saved is not None and saved != given:
        print(
            f"bizmetrics export-assets: options changed since the last export: {_as_args(saved)} -> {_as_args(given)}",
            file=sys.stderr,
        )
    try:
        files = render(
            **parse_options(
                jobs=args.jobs,
                connector_objective=args.connector_objective,
                api_objective=args.api_objective,
                thresholds={name: getattr(args, name.replace("-", "_")) for name in THRESHOLDS},
                batch_stale_after=args.batch_stale_after,
                for_durations=args.for_durations,
                objectives={
                    name: getattr(args, f"{name}_objective") for name in SLOS if name not in ("connector", "api")
                },
                latency_thresholds={
                    name: getattr(args, f"{name}_threshold") for name, slo in SLOS.items() if slo.threshold
                },
                min_events=args.min_events,
            ),
            namespace=args.namespace,
            runbook_url=args.runbook_url,
        )
        done = export_assets(args.directory, files, force=args.force, options=given)
    except (OSError, ValueError) as exc:
        print(f"bizmetrics export-assets: {exc}", file=sys.stderr)
        return 1
    for path in done.written:
        print(path)
    if done.written:
        print(Path(args.directory) / MANIFEST)
    for path in done.kept:
        print(f"bizmetrics export-assets: left alone (edited by hand, --force overwrites): {path}", file=sys.stderr)
    return 1 if done.kept else 0


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the chosen command; return its exit code."""
    parser = argparse.ArgumentParser(prog="python -m bizmetrics", description="bizmetrics tools")
    parser.add_argument("--version", action="version", version=f"bizmetrics {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo", help="serve a small API and /metrics and drive demo traffic through every metric family"
    )
    demo.add_argument(
        "--port",
        type=_port,
        default=8000,
        help="port to serve the API and /metrics on; 0 picks a free one (default: 8000)",
    )
    demo.add_argument("--addr", default="127.0.0.1", help="address to bind (default: 127.0.0.1, loopback only)")
    demo.add_argument(
        "--duration", type=_seconds, default=None, help="stop after this many seconds (default: run until Ctrl-C)"
    )
    demo.add_argument("--seed", type=int, default=None, help="seed the random traffic (default: a random seed)")
    from .assets import DEFAULT_MIN_EVENTS, DEFAULT_RUNBOOK_URL, THRESHOLDS
    from .assets.slo import SLOS

    export = commands.add_parser(
        "export-assets",
        help="write the Prometheus rules, Grafana dashboards and an Alertmanager example to a directory",
    )
    export.add_argument("directory", help="where to write prometheus/*.yml, grafana/*.json and alertmanager/*.yml")
    export.add_argument("--jobs", metavar="REGEX", help="scrape jobs the target-down alert and dashboards cover (.+)")
    for slo in SLOS.values():
        option = slo.name.replace("_", "-")
        export.add_argument(
            f"--{option}-objective",
            action="append",
            default=[],
            metavar="[JOB=]RATIO",
            help=f"objective of the {slo.name} SLO ({slo.objective:g}); JOB=RATIO sets one job's, repeatable",
        )
        if slo.threshold is not None:
            export.add_argument(
                f"--{option}-threshold",
                action="append",
                default=[],
                metavar="[JOB=]MS",
                help=f"threshold of the {slo.name} SLO, a bucket bound of {slo.metric} ({slo.threshold:g} ms);"
                " JOB=MS sets one job's, repeatable",
            )
    export.add_argument(
        "--min-events",
        action="append",
        default=[],
        metavar="[JOB=]N",
        help=f"events a window must hold before a ratio or burn-rate alert fires ({DEFAULT_MIN_EVENTS});"
        " JOB=N sets one job's, repeatable",
    )
    for name, (alert, shipped) in THRESHOLDS.items():
        export.add_argument(f"--{name}", type=float, metavar="RATIO", help=f"threshold of {alert} ({shipped})")
    export.add_argument(
        "--batch-stale-after", metavar="DURATION", help="alert when a batch job's success is older (26h)"
    )
    export.add_argument(
        "--for", dest="for_durations", action="append", default=[], metavar="ALERT=DURATION", help="an alert's for:"
    )
    export.add_argument("--force", action="store_true", help="overwrite files edited by hand since the last export")
    export.add_argument(
        "--defaults",
        action="store_true",
        help="start from the shipped settings, not the options the directory's last export recorded",
    )
    export.add_argument(
        "--namespace", metavar="PREFIX", help="metric names prefixed as BIZMETRICS_NAMESPACE=PREFIX does (acme_...)"
    )
    export.add_argument(
        "--runbook-url",
        metavar="BASE",
        help="documentation the alerts' runbook_url annotations point into: BASE/operations/runbook.html#ALERT"
        f" ({DEFAULT_RUNBOOK_URL})",
    )
    args = parser.parse_args(argv)

    if args.command == "export-assets":
        return _export_assets(export, args)

    from . import demo as demo_module

    return demo_module.run(port=args.port, addr=args.addr, duration=args.duration, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())

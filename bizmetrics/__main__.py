"""Command line: ``python -m bizmetrics demo``."""

from __future__ import annotations

import argparse
import math
import sys

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
    export.add_argument("--force", action="store_true", help="overwrite files whose content differs")
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
        from .assets import export as export_assets
        from .assets import parse_options, render

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
            done = export_assets(args.directory, files, force=args.force)
        except (OSError, ValueError) as exc:
            print(f"bizmetrics export-assets: {exc}", file=sys.stderr)
            return 1
        for path in done.written:
            print(path)
        for path in done.kept:
            print(f"bizmetrics export-assets: left alone (differs, --force overwrites): {path}", file=sys.stderr)
        return 1 if done.kept else 0

    from . import demo as demo_module

    return demo_module.run(port=args.port, addr=args.addr, duration=args.duration, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())

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
    export = commands.add_parser(
        "export-assets", help="write the Prometheus rules and Grafana dashboards to a directory"
    )
    export.add_argument("directory", help="where to write prometheus/*.yml and grafana/*.json")
    export.add_argument("--connector-objective", type=float, default=None, help="connector success SLO (0.995)")
    export.add_argument("--api-objective", type=float, default=None, help="API non-5xx SLO (0.999)")
    args = parser.parse_args(argv)

    if args.command == "export-assets":
        from .assets import export as export_assets

        try:
            paths = export_assets(
                args.directory, connector_objective=args.connector_objective, api_objective=args.api_objective
            )
        except (OSError, ValueError) as exc:
            print(f"bizmetrics export-assets: {exc}", file=sys.stderr)
            return 1
        for path in paths:
            print(path)
        return 0

    from . import demo as demo_module

    return demo_module.run(port=args.port, addr=args.addr, duration=args.duration, seed=args.seed)


if __name__ == "__main__":
    sys.exit(main())

"""The operations kit: Prometheus rules and Grafana dashboards for the bizmetrics catalogue.

``python -m bizmetrics export-assets DIR`` writes them out; see README,
"Operations kit".
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

__all__ = ["RULE_FILES", "export", "set_objectives"]

#: The rule files, in the order Prometheus should load them.
RULE_FILES = ("recording_rules.yml", "alerting_rules.yml", "slo_rules.yml")

_OBJECTIVE = re.compile(r"(expr: vector\()([0-9.]+)(\)\n\s+labels:\n\s+slo: )(connector|api)\b")


def set_objectives(slo_rules: str, *, connector: float | None = None, api: float | None = None) -> str:
    """Return ``slo_rules`` with the connector and/or API objectives replaced.

    An objective is a success ratio, strictly between 0 and 1 (0.995 is 99.5%).
    """
    wanted = {"connector": connector, "api": api}
    for name, value in wanted.items():
        if value is not None and not 0 < value < 1:
            raise ValueError(f"the {name} objective must be between 0 and 1 (exclusive), not {value}")

    def replace(match: re.Match[str]) -> str:
        value = wanted[match.group(4)]
        return match.group(0) if value is None else f"{match.group(1)}{value!r}{match.group(3)}{match.group(4)}"

    text, found = _OBJECTIVE.subn(replace, slo_rules)
    if found != 2:
        raise ValueError("slo_rules.yml does not hold the two objectives where expected")
    return text


def export(
    directory: str | Path, *, connector_objective: float | None = None, api_objective: float | None = None
) -> list[Path]:
    """Write the rule files to ``DIR/prometheus`` and the dashboards to ``DIR/grafana``; return the paths."""
    root = Path(directory)
    written = []
    package = resources.files(__name__)
    for sub, suffix in (("prometheus", ".yml"), ("grafana", ".json")):
        (root / sub).mkdir(parents=True, exist_ok=True)
        for item in sorted(package.joinpath(sub).iterdir(), key=lambda p: p.name):
            if not item.name.endswith(suffix):
                continue
            text = item.read_text(encoding="utf-8")
            if item.name == "slo_rules.yml":
                text = set_objectives(text, connector=connector_objective, api=api_objective)
            path = root / sub / item.name
            path.write_text(text, encoding="utf-8")
            written.append(path)
    return written

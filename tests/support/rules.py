"""The shipped rules as expressions a store with no rule engine answers: each alert with its recorded series inlined.

One home for ``benchmarks/anomaly.py`` (which evaluates the inlined alerts on real Prometheus over months of
data) and ``tests/test_assets_anomaly_victoriametrics.py`` (which compares them between Prometheus and
VictoriaMetrics).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import yaml

#: The interval of a rule group that sets none (the shipped groups evaluate every minute).
STEP = 60


@dataclass
class Rule:
    name: str
    expr: str
    labels: dict[str, str]
    step: int
    alert: bool = False
    duration: float = 0.0
    keep: float = 0.0


def seconds(text: str | None) -> float:
    if not text:
        return 0.0
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, "y": 31536000}
    return sum(float(n) * units[u] for n, u in re.findall(r"(\d+)(ms|[smhdwy])", text))


def parse_rules(texts: list[str]) -> list[Rule]:
    rules = []
    for text in texts:
        for group in yaml.safe_load(text)["groups"]:
            step = int(seconds(group.get("interval")) or STEP)
            for rule in group["rules"]:
                rules.append(
                    Rule(
                        rule.get("record") or rule["alert"],
                        rule["expr"],
                        {k: str(v) for k, v in (rule.get("labels") or {}).items()},
                        step,
                        alert="alert" in rule,
                        duration=seconds(rule.get("for")),
                        keep=seconds(rule.get("keep_firing_for")),
                    )
                )
    return rules


def inline(rules: list[Rule], signals: set[str] | None = None) -> dict[str, str]:
    """Each alert's expression with every recorded series it reads replaced by the rule that records it.

    A bare reference becomes the rule's expression; a range (``X[1h]``) becomes a
    subquery at the rule group's interval (``(expr)[1h:1m]``), so Prometheus
    evaluates the rule at every step of that interval, as the rule manager
    would; ``X offset O`` becomes the last such evaluation at ``t - O``.  The
    rules' static labels are set with ``label_replace`` and their names
    dropped, as a recording rule does.  Several rules recording one name make
    a union, narrowed by the reference's matchers on those static labels.  A
    selector with no name that matches on ``anomaly_name`` (the anchor's) reads
    every rule tagged with that label.  ``signals``: keep only the rules of
    these ``signal`` label values (the others read series the benchmark has not).
    """
    recording = [r for r in rules if not r.alert and (signals is None or r.labels.get("signal", "") in signals | {""})]
    by_name: dict[str, list[Rule]] = {}
    for rule in recording:
        by_name.setdefault(rule.name, []).append(rule)
    names = sorted(by_name, key=len, reverse=True)
    reference = re.compile(
        r"(?<![\w:\"])(?:(" + "|".join(re.escape(n) for n in names) + r")(\{[^}]*\})?|(\{anomaly_name[^}]*\}))"
        r"(\[[^\]:]+\])?(\s+offset\s+\w+)?"
    )
    done: dict[int, str] = {}

    def recorded(rule: Rule) -> str:
        key = id(rule)
        if key not in done:
            expr = f'label_replace(({expand(rule.expr)}), "__name__", "", "", "")'
            for label, value in rule.labels.items():
                expr = f'label_replace({expr}, "{label}", "{value}", "", "")'
            done[key] = expr
        return done[key]

    def matches(rule: Rule, matchers: str) -> bool:
        for label, op, value in re.findall(r'(\w+)\s*(=~|!~|!=|=)\s*"([^"]*)"', matchers):
            if label not in rule.labels:
                continue
            hit = re.fullmatch(value, rule.labels[label]) is not None if "~" in op else rule.labels[label] == value
            if hit == op.startswith("!"):
                return False
        return True

    def expand(expr: str) -> str:
        def replace(match: re.Match[str]) -> str:
            name, matchers, tagged, window, offset = match.groups()
            chosen = (
                [r for r in recording if "anomaly_name" in r.labels]
                if tagged
                else [r for r in by_name[name] if matches(r, matchers or "")]
            )
            if not chosen:
                return "vector(0) < 0"  # nothing recorded under this name here: an empty vector
            base = " or ".join(recorded(r) for r in chosen)
            step = f"{min(r.step for r in chosen)}s"
            if window:
                return f"({base})[{window[1:-1]}:{step}]{offset or ''}"
            if offset:
                return f"last_over_time(({base})[{step}:{step}]{offset})"
            return f"({base})"

        return reference.sub(replace, expr)

    return {rule.name: expand(rule.expr) for rule in rules if rule.alert}

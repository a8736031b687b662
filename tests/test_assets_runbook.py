"""Every alert links its runbook entry; ``export-assets --runbook-url BASE`` points the links at a team's own copy."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from bizmetrics import assets
from bizmetrics.__main__ import main

#: The shipped kit, rendered once (rendering takes a while).
SHIPPED = assets.render()


def _alerts(files: dict[str, str]) -> list[dict[str, object]]:
    found = []
    for name, text in files.items():
        if name.startswith("prometheus/"):
            for group in yaml.safe_load(text)["groups"]:
                found += [rule for rule in group["rules"] if "alert" in rule]
    return found


def test_every_shipped_alert_links_its_entry_in_the_published_runbook():
    alerts = _alerts(SHIPPED)
    assert len(alerts) >= 50
    for alert in alerts:
        name = str(alert["alert"])
        url = alert["annotations"]["runbook_url"]  # type: ignore[index]
        assert url == f"https://bizmetrics.readthedocs.io/en/latest/operations/runbook.html#{name.lower()}"
        assert url == assets.runbook_url(name)


_SEGMENT = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-_.~", min_size=1, max_size=12)


@given(
    scheme=st.sampled_from(["http", "https"]),
    host=st.from_regex(r"[a-z][a-z0-9-]{0,20}(\.[a-z]{2,6}){0,2}(:[0-9]{2,5})?", fullmatch=True),
    path=st.lists(_SEGMENT, max_size=3),
    slash=st.booleans(),
)
def test_runbook_url_base_changes_only_the_links(scheme: str, host: str, path: list[str], slash: bool):
    """Each link becomes BASE/operations/runbook.html#alert (a trailing slash or not); nothing else changes."""
    base = f"{scheme}://{host}" + "".join(f"/{p}" for p in path) + ("/" if slash else "")
    shipped = SHIPPED
    pointed = {name: assets.with_runbook_url(text, base) for name, text in shipped.items()}
    root = base.rstrip("/")
    for name, text in shipped.items():
        # Each alert's link, after its name: the same lines, only the base changed.
        names = [line.split(": ", 1)[1] for line in text.splitlines() if line.startswith("      - alert: ")]
        links = [line.split(": ", 1)[1] for line in pointed[name].splitlines() if "runbook_url: " in line]
        assert links == [f"{root}/operations/runbook.html#{alert.lower()}" for alert in names], name
        left = [line for line in text.splitlines() if "runbook_url:" not in line]
        right = [line for line in pointed[name].splitlines() if "runbook_url:" not in line]
        assert left == right, name


@pytest.mark.parametrize(
    "base",
    ["docs.example.com", "ftp://docs.example.com", "https://docs.example.com/a b", "https://x.example/?q=1",
     "https://x.example/#top", 'https://x.example/"', "https://x.example/{{ $labels.job }}", ""],
)  # fmt: skip
def test_a_base_that_is_not_a_plain_http_url_is_refused(base: str):
    with pytest.raises(ValueError, match="--runbook-url"):
        assets.with_runbook_url(SHIPPED["prometheus/alerting_rules.yml"], base)


def test_export_assets_runbook_url_option(tmp_path: Path, capsys: pytest.CaptureFixture[str]):
    """The command line writes the links under the base; a bad base is an error (exit 1), no file written."""
    assert main(["export-assets", str(tmp_path / "ops"), "--runbook-url", "https://wiki.example.com/sre/"]) == 0
    files = {
        f"prometheus/{path.name}": path.read_text() for path in sorted((tmp_path / "ops" / "prometheus").glob("*.yml"))
    }
    alerts = _alerts(files)
    assert len(alerts) == len(_alerts(SHIPPED))
    for alert in alerts:
        url = alert["annotations"]["runbook_url"]  # type: ignore[index]
        assert url == f"https://wiki.example.com/sre/operations/runbook.html#{str(alert['alert']).lower()}"
    capsys.readouterr()
    assert main(["export-assets", str(tmp_path / "bad"), "--runbook-url", "wiki page"]) == 1
    assert "--runbook-url 'wiki page'" in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()

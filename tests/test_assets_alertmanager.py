"""End to end: the shipped rules in a real Prometheus, alerting a real Alertmanager routed by the shipped example.

Two services run the demo: ``checkout`` keeps running (its campaign_sync
workflow fails one run in five, above the 10% warning threshold) and
``billing`` is stopped (target down: critical). A third, ``shop``, serves
three customers through bizmetrics: ``big`` never fails, ``globex`` gets a
5xx for one request in ten (100 times its 0.1% budget) and ``tiny`` makes
three requests, two failing. Alertmanager (Debian's
``prometheus-alertmanager``, required: a missing binary fails the test) must
show the alerts with their job, severity and rendered annotations, routed
to the pager and ticket receivers, which are webhooks served by this test:
globex's page names its tenant_id, tiny never pages, and shop as a whole
(0.3% of failures) does not page. A fourth, ``outage``, fails half of every
customer's requests: it pages once, as a service, and the example's
inhibition holds back its customers' pages.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from support.ops import ASSETS
from support.servers import Prometheus, binary, free_port, get, process, wait
from support.servers import prometheus as start_prometheus

from bizmetrics import assets

#: Alerts that must wait minutes with the shipped ``for:`` fire after a second here.
#: The waits for them are long (150 s) because a loaded CI machine slows the demo
#: services, whose rates must first pass the alerts' volume guards; a pass is quick.
FOR = {
    "BizmetricsTargetDown": "1s",
    "BizmetricsWorkflowFailureRatioHigh": "1s",
    "BizmetricsApiTenantSLOBurnRateFast": "1s",
    "BizmetricsApiSLOBurnRateFast": "1s",
}

#: The shop service: its customers' API requests, recorded through bizmetrics, served on /metrics.
SHOP = """
import sys, time, bizmetrics
from prometheus_client import start_http_server
start_http_server(int(sys.argv[1]), addr="127.0.0.1")
# tiny's series exist from the start (a first request, and its 503 series at 0, as an application
# initialises the codes it cares about), so the rules see the failures that follow.
bizmetrics.record_api_request("GET", "/orders", 200, 5.0, "tiny")
from bizmetrics.metrics import API_ERRORS, API_REQUESTS
API_REQUESTS.labels("GET", "/orders", "503", "tiny")
API_ERRORS.labels("GET", "/orders", "503", "tiny")
for tick in range(6000):
    for _ in range(300):
        bizmetrics.record_api_request("GET", "/orders", 200, 5.0, "big")
    for _ in range(9):
        bizmetrics.record_api_request("GET", "/orders", 200, 5.0, "globex")
    bizmetrics.record_api_request("GET", "/orders", 503, 5.0, "globex")
    if tick == 150:  # long after Prometheus first saw the service: two failures in three more requests
        for status in (503, 503, 200):
            bizmetrics.record_api_request("GET", "/orders", status, 5.0, "tiny")
    time.sleep(0.1)
"""


class _Webhooks(BaseHTTPRequestHandler):
    received: list[tuple[str, dict[str, Any]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, json.loads(body)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class Stack:
    def __init__(self, alertmanager: str, prometheus: Prometheus, received: list[tuple[str, dict[str, Any]]]) -> None:
        self.alertmanager = alertmanager
        self.prometheus = prometheus
        self.received = received

    def alerts(self) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = json.loads(get(f"{self.alertmanager}/api/v2/alerts"))
        return found


def _alertmanager_config(webhooks: str) -> dict[str, Any]:
    """The shipped example, its receivers pointed at this test's webhooks and its group_wait shortened."""
    config: dict[str, Any] = yaml.safe_load(ASSETS.joinpath("alertmanager").joinpath("alertmanager.yml").read_text())
    for receiver in config["receivers"]:
        for hook in receiver["webhook_configs"]:
            hook["url"] = f"{webhooks}/{receiver['name']}"
    config["route"]["group_wait"] = "1s"
    return config


#: The outage service: half of every customer's requests fail, so the service as a whole pages.
OUTAGE = """
import sys, time, bizmetrics
from prometheus_client import start_http_server
start_http_server(int(sys.argv[1]), addr="127.0.0.1")
for tick in range(6000):
    for tenant in ("initech", "umbrella"):
        for status in (200, 503) * 20:
            bizmetrics.record_api_request("GET", "/orders", status, 5.0, tenant)
    time.sleep(0.1)
"""


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("alertmanager")
    assets.export(work, assets.render(for_durations=FOR))
    received: list[tuple[str, dict[str, Any]]] = []
    handler = type("Handler", (_Webhooks,), {"received": received})
    hooks = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=hooks.serve_forever, daemon=True).start()
    (work / "alertmanager.yml").write_text(
        yaml.safe_dump(_alertmanager_config(f"http://127.0.0.1:{hooks.server_port}"))
    )
    am_port, prom_port, checkout_port, billing_port = free_port(), free_port(), free_port(), free_port()
    shop_port, outage_port = free_port(), free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(work / "prometheus" / name) for name in assets.RULE_FILES],
        "alerting": {"alertmanagers": [{"static_configs": [{"targets": [f"127.0.0.1:{am_port}"]}]}]},
        "scrape_configs": [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in (
                ("checkout", checkout_port),
                ("billing", billing_port),
                ("shop", shop_port),
                ("outage", outage_port),
            )
        ],
    }
    demo = [sys.executable, "-m", "bizmetrics", "demo", "--seed", "3", "--port"]
    billing = process([*demo, str(billing_port)])
    try:
        with (
            process([*demo, str(checkout_port)]),
            process([sys.executable, "-c", SHOP, str(shop_port)]),
            process([sys.executable, "-c", OUTAGE, str(outage_port)]),
            process(
                [
                    binary("prometheus-alertmanager"),
                    f"--config.file={work / 'alertmanager.yml'}",
                    f"--storage.path={work / 'alertmanager-data'}",
                    f"--web.listen-address=127.0.0.1:{am_port}",
                    "--cluster.listen-address=",
                ]
            ),
            start_prometheus(config, work, prom_port),
        ):
            alertmanager = f"http://127.0.0.1:{am_port}"
            wait(lambda: get(f"{alertmanager}/-/ready"), "Alertmanager")
            prom = Prometheus(f"http://127.0.0.1:{prom_port}")
            wait(lambda: get(f"{prom.url}/-/ready"), "Prometheus")
            wait(lambda: prom.result('up{job="billing"} == 1'), "a scrape of billing")
            billing.stop()  # the billing service goes down
            yield Stack(alertmanager, prom, received)
    finally:
        billing.stop()
        hooks.shutdown()
        hooks.server_close()


def _firing(stack: Stack, alertname: str, job: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        for alert in stack.alerts():
            if alert["labels"]["alertname"] == alertname and alert["labels"].get("job") == job:
                return alert
        return None

    found: dict[str, Any] = wait(probe, f"{alertname} for {job} in Alertmanager", timeout=150)
    return found


@pytest.mark.slow
def test_critical_alert_reaches_the_pager(stack):
    """The stopped service fires BizmetricsTargetDown: critical, job billing, annotations rendered, routed to pager."""
    alert = _firing(stack, "BizmetricsTargetDown", "billing")
    assert alert["labels"]["severity"] == "critical"
    assert alert["status"]["state"] == "active"
    assert [r["name"] for r in alert["receivers"]] == ["pager"]
    notes = alert["annotations"]
    assert notes["summary"].startswith("billing: 127.0.0.1:")
    assert notes["summary"].endswith(" cannot be scraped")
    assert "(job billing)" in notes["description"]
    assert notes["runbook"].startswith("The service is down")


@pytest.mark.slow
def test_warning_alert_reaches_the_ticket_queue(stack):
    """The running service's failing workflow fires a warning for job checkout only, routed to the ticket receiver."""
    alert = _firing(stack, "BizmetricsWorkflowFailureRatioHigh", "checkout")
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["workflow_id"] == "campaign_sync"
    assert [r["name"] for r in alert["receivers"]] == ["ticket"]
    notes = alert["annotations"]
    assert notes["summary"].startswith("checkout: workflow campaign_sync, ")
    assert notes["summary"].endswith("% of executions fail")
    assert "in checkout have failed" in notes["description"]
    assert notes["runbook"]
    down = [a["labels"]["job"] for a in stack.alerts() if a["labels"]["alertname"] == "BizmetricsTargetDown"]
    assert "checkout" not in down


@pytest.mark.slow
def test_receivers_are_notified_by_severity(stack):
    """Alertmanager notifies the pager webhook of the critical alert and the ticket webhook of the warning."""
    _firing(stack, "BizmetricsTargetDown", "billing")
    _firing(stack, "BizmetricsWorkflowFailureRatioHigh", "checkout")

    def notified() -> dict[str, set[str]] | None:
        seen: dict[str, set[str]] = {"/pager": set(), "/ticket": set()}
        for path, body in list(stack.received):
            for alert in body["alerts"]:
                seen.setdefault(path, set()).add(f"{alert['labels']['alertname']} {alert['labels']['severity']}")
        wanted = "BizmetricsTargetDown critical" in seen["/pager"] and seen["/ticket"]
        return seen if wanted else None

    seen = wait(notified, "webhook notifications", timeout=150)
    assert all(note.endswith(" critical") for note in seen["/pager"])
    assert "BizmetricsWorkflowFailureRatioHigh warning" in seen["/ticket"]
    assert not any(note.endswith(" critical") for note in seen["/ticket"])


def _firing_for_tenant(stack: Stack, alertname: str, tenant: str) -> dict[str, Any]:
    def probe() -> dict[str, Any] | None:
        for alert in stack.alerts():
            if alert["labels"]["alertname"] == alertname and alert["labels"].get("tenant_id") == tenant:
                return alert
        return None

    found: dict[str, Any] = wait(probe, f"{alertname} for tenant {tenant} in Alertmanager", timeout=150)
    return found


@pytest.mark.slow
def test_a_customer_burning_its_budget_pages_with_its_tenant_id(stack):
    """globex's 10% of 5xx pages the pager webhook as BizmetricsApiTenantSLOBurnRateFast with tenant_id, slo, job."""
    alert = _firing_for_tenant(stack, "BizmetricsApiTenantSLOBurnRateFast", "globex")
    assert alert["labels"] | {"alertname": "x"} == {
        "alertname": "x",
        "job": "shop",
        "slo": "api",
        "severity": "critical",
        "tenant_id": "globex",
    }
    assert alert["status"]["state"] == "active"
    assert [r["name"] for r in alert["receivers"]] == ["pager"]
    assert alert["annotations"]["summary"] == "shop for tenant globex: the api SLO is burning its error budget fast"
    assert "Wilson" in alert["annotations"]["description"]

    def paged() -> list[dict[str, Any]] | None:
        found = [
            body
            for path, body in list(stack.received)
            if path == "/pager" and any(a["labels"].get("tenant_id") == "globex" for a in body["alerts"])
        ]
        return found or None

    notification = wait(paged, "the pager webhook's notification of globex", timeout=150)[0]
    # One notification per customer: grouped by alertname, job and tenant_id.
    assert notification["groupLabels"] == {
        "alertname": "BizmetricsApiTenantSLOBurnRateFast",
        "job": "shop",
        "tenant_id": "globex",
    }
    assert {a["labels"]["tenant_id"] for a in notification["alerts"]} == {"globex"}


@pytest.mark.slow
def test_a_tiny_customer_and_the_service_as_a_whole_do_not_page(stack):
    """tiny's 2 failures out of 3 never page, and shop's 0.3% of failures does not page the service."""
    _firing_for_tenant(stack, "BizmetricsApiTenantSLOBurnRateFast", "globex")
    # tiny's failures are in Prometheus (so the rules did see them) ...
    assert stack.prometheus.eventually_nonempty(
        'job_tenant_id:bizmetrics_slo_errors:increase5m{tenant_id="tiny"} > 1.5', timeout=60
    )
    time.sleep(3)  # ... and the alert rules had evaluations, and Alertmanager its group_wait, to act on them
    tenants = {a["labels"].get("tenant_id") for a in stack.alerts() if a["labels"].get("job") == "shop"}
    assert "tiny" not in tenants
    pages = [a["labels"]["alertname"] for a in stack.alerts() if a["labels"].get("job") == "shop"]
    assert "BizmetricsApiSLOBurnRateFast" not in pages


@pytest.mark.slow
def test_a_service_outage_pages_once_not_once_per_customer(stack):
    """When a whole service burns its budget, its page holds back its customers' pages of the same SLO."""
    _firing(stack, "BizmetricsApiSLOBurnRateFast", "outage")
    tenant = _firing_for_tenant(stack, "BizmetricsApiTenantSLOBurnRateFast", "initech")
    assert tenant["labels"]["job"] == "outage"

    def suppressed() -> list[dict[str, Any]] | None:
        found = [
            alert
            for alert in stack.alerts()
            if alert["labels"]["alertname"] == "BizmetricsApiTenantSLOBurnRateFast"
            and alert["labels"]["job"] == "outage"
            and alert["status"]["state"] == "suppressed"
            and alert["status"]["inhibitedBy"]
        ]
        return found if len(found) == 2 else None

    assert {a["labels"]["tenant_id"] for a in wait(suppressed, "the customers' pages held back")} == {
        "initech",
        "umbrella",
    }
    wait(
        lambda: any(
            path == "/pager" and any(a["labels"]["alertname"] == "BizmetricsApiSLOBurnRateFast" for a in body["alerts"])
            for path, body in list(stack.received)
        ),
        "the service's page at the pager",
    )
    paged_tenants = {
        a["labels"].get("tenant_id")
        for path, body in list(stack.received)
        if path == "/pager"
        for a in body["alerts"]
        if a["labels"].get("job") == "outage"
    }
    assert paged_tenants == {None}

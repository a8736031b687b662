"""``?name[]=`` filters of ``metrics_app()`` and the Django view in multiprocess mode."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent(
    """
    import asyncio, json, sys

    import django
    from django.conf import settings

    settings.configure(DEBUG=False, ALLOWED_HOSTS=["*"], ROOT_URLCONF=__name__, MIDDLEWARE=[])
    django.setup()

    import httpx
    from django.test import RequestFactory

    import bizmetrics
    from bizmetrics import multiprocess
    from bizmetrics.asgi import metrics_app
    from bizmetrics.django import metrics_view

    urlpatterns = []
    assert multiprocess.enabled()
    bizmetrics.record_connector_operation("wordpress", "get_posts", 12.0, True, "t1")
    bizmetrics.record_connector_sync("wordpress", "posts", 4, "t1")
    query = "name[]=connector_operations_total&name[]=connector_sync_records_total"

    async def asgi():
        transport = httpx.ASGITransport(app=metrics_app())
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            plain = await client.get("/metrics?" + query)
            om = await client.get("/metrics?" + query, headers={"Accept": "application/openmetrics-text"})
            return plain.text, om.text

    asgi_text, asgi_om = asyncio.run(asgi())
    django_text = metrics_view(RequestFactory().get("/metrics?" + query)).content.decode()
    json.dump({"asgi": asgi_text, "asgi_om": asgi_om, "django": django_text}, sys.stdout)
    """
)


def test_name_filters_select_series_in_multiprocess_mode(tmp_path: Path) -> None:
    """``metrics_app()`` and ``metrics_view`` serve the named series of every worker, not an empty 200."""
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    env = dict(os.environ, PROMETHEUS_MULTIPROC_DIR=str(mp_dir))
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    bodies = json.loads(out.stdout)
    for body in bodies.values():
        ops = 'connector_type="wordpress",operation="get_posts",status="success",tenant_id="t1"'
        assert f"connector_operations_total{{{ops}}} 1.0" in body
        records = 'connector_type="wordpress",resource_type="posts",tenant_id="t1"'
        assert f"connector_sync_records_total{{{records}}} 4.0" in body
        # Only what was asked for.
        assert "connector_operation_duration" not in body
        assert "connector_sync_operations_total" not in body
    assert bodies["asgi_om"].endswith("# EOF\n")

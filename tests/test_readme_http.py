"""The HTTP middleware guide's examples (docs/guides/http.md), as pasted: each serves its route and /metrics."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from support.registry import unique, value

# Written for status classes (4xx): the exact codes of the default are in test_helpers_http_status.py.
pytestmark = pytest.mark.usefixtures("http_status_classes")

README = Path(__file__).parent.parent / "docs" / "guides" / "http.md"


def example(marker: str) -> dict[str, Any]:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"{README} should have one example with {marker!r}"
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    exec(found[0], namespace)
    return namespace


@pytest.mark.parametrize("marker", ["from fastapi import FastAPI", "from starlette.applications import Starlette"])
def test_readme_asgi_examples(marker: str):
    app = example(marker)["app"]
    tenant = unique()

    async def main() -> tuple[httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
            user = await client.get("/users/7", headers={"X-Tenant-ID": tenant})
            return user, await client.get("/metrics")

    user, metrics = asyncio.run(main())
    assert user.status_code == 200
    assert metrics.status_code == 200
    labels = {"method": "GET", "endpoint": "/users/{user_id}", "status": "2xx", "tenant_id": tenant}
    assert value("api_requests_total", **labels) == 1
    assert f'tenant_id="{tenant}"' in metrics.text


def test_readme_flask_example():
    app = example("from flask import Flask")["app"]
    tenant = unique()
    client = app.test_client()
    assert client.get("/users/7", headers={"X-Tenant-ID": tenant}).get_json() == {"id": 7}
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    labels = {"method": "GET", "endpoint": "/users/<int:user_id>", "status": "2xx", "tenant_id": tenant}
    assert value("api_requests_total", **labels) == 1
    assert f'tenant_id="{tenant}"'.encode() in metrics.data

"""``bizmetrics.start_http_server``: the fast exposition over HTTP and HTTPS, with prometheus_client's TLS options."""

from __future__ import annotations

import gzip
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import trustme
from support.registry import unique

import bizmetrics


@contextmanager
def serving(**kwargs: Any) -> Iterator[int]:
    """``start_http_server`` on a free loopback port; yields the port, then shuts the server down."""
    httpd, thread = bizmetrics.start_http_server(0, addr="127.0.0.1", **kwargs)
    try:
        assert thread.daemon and thread.is_alive()
        yield httpd.server_port
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(10)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A test CA, the server's certificate for 127.0.0.1 and a client certificate, as files."""
    work = tmp_path_factory.mktemp("pki")
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1")
    client = ca.issue_cert("client@example.com")
    files = {"ca": work / "ca.pem", "cert": work / "cert.pem", "key": work / "key.pem", "client": work / "client.pem"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    server.cert_chain_pems[0].write_to_path(str(files["cert"]))
    server.private_key_pem.write_to_path(str(files["key"]))
    client.private_key_and_cert_chain_pem.write_to_path(str(files["client"]))
    return {"ca": ca, **{name: str(path) for name, path in files.items()}}


def _get(url: str, headers: dict[str, str] | None = None, context: ssl.SSLContext | None = None) -> tuple[str, bytes]:
    request = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(request, timeout=10, context=context) as response:
        return response.headers.get("Content-Type", ""), response.read()


def _client(pki: dict[str, Any], *, cert: bool = False, tweak: Callable[[ssl.SSLContext], None] | None = None) -> Any:
    context = ssl.create_default_context(cafile=pki["ca"])
    if cert:
        context.load_cert_chain(pki["client"])
    if tweak:
        tweak(context)
    return context


def test_serves_the_registry_in_text_openmetrics_and_gzip():
    """Plain text by default, OpenMetrics when asked, gzipped when accepted; what was recorded is in each."""
    t = unique()
    bizmetrics.record_connector_operation(t, "op", 5, True, "acme")
    with serving() as port:
        url = f"http://127.0.0.1:{port}/metrics"
        kind, body = _get(url)
        assert kind.startswith("text/plain")
        assert f'connector_operations_total{{connector_type="{t}"'.encode() in body
        kind, om = _get(url, {"Accept": "application/openmetrics-text; version=1.0.0"})
        assert kind.startswith("application/openmetrics-text")
        assert om.endswith(b"# EOF\n")
        _, zipped = _get(url, {"Accept-Encoding": "gzip"})
        assert f'connector_type="{t}"'.encode() in gzip.decompress(zipped)


def test_a_browsers_favicon_request_gets_an_empty_page_as_from_prometheus_client():
    """``/favicon.ico`` is answered empty, like prometheus_client's server; any other path is the exposition."""
    t = unique()
    bizmetrics.record_connector_operation(t, "op", 5, True, "acme")
    with serving() as port:
        assert _get(f"http://127.0.0.1:{port}/favicon.ico")[1] == b""
        assert f'connector_type="{t}"'.encode() in _get(f"http://127.0.0.1:{port}/anything")[1]


def test_serves_https_with_the_given_certificate(pki):
    """certfile and keyfile: the exposition over TLS, verified against the CA; plain HTTP is refused."""
    with serving(certfile=pki["cert"], keyfile=pki["key"]) as port:
        _, body = _get(f"https://127.0.0.1:{port}/metrics", context=_client(pki))
        assert b"# TYPE connector_operations_total counter" in body
        with pytest.raises((urllib.error.URLError, ConnectionError)):
            _get(f"http://127.0.0.1:{port}/metrics")


def test_client_certificates_are_required_when_asked(pki):
    """client_auth_required with client_cafile: a client without a certificate of that CA is refused."""
    options = {"certfile": pki["cert"], "keyfile": pki["key"], "client_cafile": pki["ca"], "client_auth_required": True}
    with serving(**options) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        _, body = _get(url, context=_client(pki, cert=True))
        assert b"connector_operations_total" in body
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _get(url, context=_client(pki))


def test_tls_versions_are_bounded_as_asked(pki):
    """tls_max_version TLS 1.2: a client that insists on TLS 1.3 cannot connect; one that allows 1.2 can."""
    options = {
        "certfile": pki["cert"],
        "keyfile": pki["key"],
        "tls_min_version": ssl.TLSVersion.TLSv1_2,
        "tls_max_version": ssl.TLSVersion.TLSv1_2,
    }

    def only_13(context: ssl.SSLContext) -> None:
        context.minimum_version = ssl.TLSVersion.TLSv1_3

    with serving(**options) as port:
        url = f"https://127.0.0.1:{port}/metrics"
        assert b"connector_operations_total" in _get(url, context=_client(pki))[1]
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            _get(url, context=_client(pki, tweak=only_13))


def test_client_cafile_without_client_auth_still_serves_anonymous_clients(pki):
    """A CA to verify clients with, but no certificate required: a client without one is served."""
    with serving(certfile=pki["cert"], keyfile=pki["key"], client_cafile=pki["ca"]) as port:
        assert b"connector_operations_total" in _get(f"https://127.0.0.1:{port}/metrics", context=_client(pki))[1]

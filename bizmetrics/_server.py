"""``bizmetrics.start_http_server``: prometheus_client's, serving the fast exposition."""

from __future__ import annotations

import socket
import ssl
import threading
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import REGISTRY
from prometheus_client.registry import Collector

from .wsgi import metrics_app

__all__ = ["start_http_server"]


class _SilentHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        """Log nothing."""


class _Server(ThreadingMixIn, WSGIServer):
    # Daemon threads: a scrape in progress never keeps the process alive.
    daemon_threads = True


def _ssl_context(
    certfile: str,
    keyfile: str,
    protocol: int,
    cafile: str | None,
    capath: str | None,
    client_auth_required: bool,
    tls_min_version: ssl.TLSVersion | None,
    tls_max_version: ssl.TLSVersion | None,
) -> ssl.SSLContext:
    context = ssl.SSLContext(protocol=protocol)
    if cafile is not None or capath is not None:
        context.load_verify_locations(cafile, capath)
    else:
        context.load_default_certs(purpose=ssl.Purpose.CLIENT_AUTH)
    if client_auth_required:
        context.verify_mode = ssl.CERT_REQUIRED
    context.load_cert_chain(certfile=certfile, keyfile=keyfile)
    if tls_min_version is not None:
        context.minimum_version = tls_min_version
    if tls_max_version is not None:
        context.maximum_version = tls_max_version
    return context


def start_http_server(
    port: int,
    addr: str = "0.0.0.0",
    registry: Collector = REGISTRY,
    certfile: str | None = None,
    keyfile: str | None = None,
    client_cafile: str | None = None,
    client_capath: str | None = None,
    protocol: int = ssl.PROTOCOL_TLS_SERVER,
    client_auth_required: bool = False,
    tls_min_version: ssl.TLSVersion | None = None,
    tls_max_version: ssl.TLSVersion | None = None,
) -> tuple[WSGIServer, threading.Thread]:
    """Serve ``registry`` over HTTP from a daemon thread: ``prometheus_client.start_http_server``, faster.

    Same signature, same TLS options, same body byte for byte; the body is
    rendered by bizmetrics' exposition (about 10x faster on the catalogue),
    negotiated by ``Accept`` (OpenMetrics for Prometheus) and gzipped when the
    client accepts it.  In multiprocess mode pass
    ``bizmetrics.multiprocess.registry()``, as with prometheus_client.

    .. versionadded:: 0.3.0
    """
    infos = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _, _, _, sockaddr = next(iter(infos))

    class Server(_Server):
        address_family = family

    httpd = make_server(sockaddr[0], port, metrics_app(registry), Server, handler_class=_SilentHandler)  # type: ignore[arg-type]
    if certfile and keyfile:
        context = _ssl_context(
            certfile,
            keyfile,
            protocol,
            client_cafile,
            client_capath,
            client_auth_required,
            tls_min_version,
            tls_max_version,
        )
        httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    return httpd, thread

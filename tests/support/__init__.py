"""What the tests share: one home each for reading the registry, strategies, sample callables, servers and assets.

- ``registry``: reading the default registry (``value``, ``exists``, ``unique``, ``clear_catalogue``);
- ``strategies``: the hypothesis strategies for what applications pass to bizmetrics;
- ``samples``: sample callables of every kind (sync, coroutine, generator, async generator) and a runner;
- ``servers``: real servers and processes on loopback (Prometheus, the Pushgateway, Alertmanager,
  VictoriaMetrics, PostgreSQL, Redis, an HTTP API) and waiting for them;
- ``ops``: the shipped rules, alerts and dashboards, and promtool unit tests against them;
- ``rules``: the rules with their recorded series inlined (for VictoriaMetrics and the anomaly benchmark);
- ``jobs``: Celery and RQ workers and publishers for the background-job tests.

The fixtures are in ``tests/conftest.py``.
"""

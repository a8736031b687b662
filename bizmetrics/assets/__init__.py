"""The operations kit: Prometheus rules and Grafana dashboards for the bizmetrics catalogue.

``python -m bizmetrics export-assets DIR`` writes them out; see README,
"Operations kit".
"""

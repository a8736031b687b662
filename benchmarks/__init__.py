"""Benchmarks of bizmetrics: decorator overhead and scrape cost.

Run ``python -m benchmarks`` from a checkout with bizmetrics installed
(``pip install '.[bench]'``); ``--help`` lists the options.  See README,
"Performance".
"""

"""The anchor: Grafana's promql-anomaly-detection "adaptive" and "robust" strategies, rewritten as rules of our own.

Read from github.com/grafana/promql-anomaly-detection (``rules/adaptive.yml``,
``rules/robust.yml``) and written again with the same arithmetic, windows,
offsets, group intervals, multipliers and ``for:``; only the names differ
(``anchor_adaptive:*``, ``anchor_robust:*``) and the constants the original
records as series (``threshold_by_covar`` 0.5, ``sparse_threshold`` 5/60,
``stddev_multiplier`` 2, ``margin_multiplier`` 0.5, ``mad_multiplier`` 2) are
written inline, which computes the same.  Kept as the original has them:

- the sparse-series filter is followed by a catch-all branch that selects
  every tagged series again, so it has no effect;
- selecting ``> 0`` drops zero values, so a series at 0 has no level and no
  alert (a silent tenant is never reported);
- the long-term (adaptive) and seasonal (robust) groups run every 5 minutes.

The input is what the project's README recommends: a rate per service (here
per job and tenant) tagged ``anomaly_name`` and ``anomaly_type: requests``.
"""

from __future__ import annotations


def input_rules(strategy: str) -> str:
    """The anchor's input: our counter as a 5-minute rate per job and tenant, tagged for ``strategy``."""
    return f"""\
groups:
  - name: anchor-input
    rules:
      - record: job_tenant_id:api_requests:rate5m
        expr: sum by (job, tenant_id) (rate(api_requests_total[5m]))
        labels:
          anomaly_name: api_requests
          anomaly_type: requests
          anomaly_strategy: {strategy}
"""


_TAGGED = '{anomaly_name!="", anomaly_type="requests", anomaly_select="", anomaly_strategy=~"^$|adaptive"}'
_ANY = '{anomaly_name!="", anomaly_select="", anomaly_strategy=~"^$|adaptive"}'

ADAPTIVE = f"""\
groups:
  - name: anchor-adaptive-short-term
    rules:
      - record: anchor_adaptive:select
        expr: |
          (
            {_TAGGED} > 0
            unless avg_over_time({_TAGGED}[1h]) < 5/60
          )
          or
          {_ANY} > 0
        labels:
          anomaly_select: "1"
          anomaly_strategy: adaptive
      - record: anchor_adaptive:avg_1h
        expr: avg_over_time(anchor_adaptive:select[1h])
      # The 1h spread, kept only where the coefficient of variation exceeds 0.5 (the high-pass filter).
      - record: anchor_adaptive:stddev_1h:filtered
        expr: stddev_over_time(anchor_adaptive:select[1h]) > anchor_adaptive:avg_1h * 0.5
      - record: anchor_adaptive:stddev_st
        expr: avg_over_time(anchor_adaptive:stddev_1h:filtered[26h])
      - record: anchor_adaptive:level
        expr: anchor_adaptive:select
      - record: anchor_adaptive:lower_band
        expr: |
          clamp_min(
            min without (prediction_type) (
              label_replace(
                last_over_time(anchor_adaptive:avg_1h[2m]) - last_over_time(anchor_adaptive:stddev_st[2m]) * 2,
                "prediction_type", "short_term", "", ""
              )
              or
              label_replace(
                last_over_time(anchor_adaptive:avg_1h[2m]) - last_over_time(anchor_adaptive:avg_1h[2m]) * 0.5,
                "prediction_type", "margin", "", ""
              )
              or
              last_over_time(anchor_adaptive:lower_band_lt[10m])
            ),
            0
          )
      - record: anchor_adaptive:upper_band
        expr: |
          max without (prediction_type) (
            label_replace(
              last_over_time(anchor_adaptive:avg_1h[2m]) + last_over_time(anchor_adaptive:stddev_st[2m]) * 2,
              "prediction_type", "short_term", "", ""
            )
            or
            label_replace(
              last_over_time(anchor_adaptive:avg_1h[2m]) + last_over_time(anchor_adaptive:avg_1h[2m]) * 0.5,
              "prediction_type", "margin", "", ""
            )
            or
            last_over_time(anchor_adaptive:upper_band_lt[10m])
          )

  - name: anchor-adaptive-long-term
    interval: 5m
    rules:
      - record: anchor_adaptive:upper_band_lt
        expr: |
          max without (look_back) (
            label_replace(
              avg_over_time(anchor_adaptive:select[1h] offset 167h30m)
                + stddev_over_time(anchor_adaptive:select[1h] offset 167h30m) * 2,
              "look_back", "1w", "", ""
            )
            or
            label_replace(
              avg_over_time(anchor_adaptive:select[1h] offset 23h30m)
                + stddev_over_time(anchor_adaptive:select[1h] offset 23h30m) * 2,
              "look_back", "1d", "", ""
            )
          )
      - record: anchor_adaptive:lower_band_lt
        expr: |
          min without (look_back) (
            label_replace(
              avg_over_time(anchor_adaptive:select[1h] offset 167h30m)
                - stddev_over_time(anchor_adaptive:select[1h] offset 167h30m) * 2,
              "look_back", "1w", "", ""
            )
            or
            label_replace(
              avg_over_time(anchor_adaptive:select[1h] offset 23h30m)
                - stddev_over_time(anchor_adaptive:select[1h] offset 23h30m) * 2,
              "look_back", "1d", "", ""
            )
          )

  - name: anchor-adaptive-alerts
    rules:
      - alert: AnchorAdaptiveAnomaly
        expr: |
          last_over_time(anchor_adaptive:level[2m])
            < last_over_time(anchor_adaptive:lower_band{{anomaly_strategy="adaptive"}}[2m])
          or
          last_over_time(anchor_adaptive:level[2m])
            > last_over_time(anchor_adaptive:upper_band{{anomaly_strategy="adaptive"}}[2m])
        for: 5m
        labels:
          severity: warning
"""

_RTAGGED = '{anomaly_name!="", anomaly_type="requests", anomaly_select="", anomaly_strategy="robust"}'
_RANY = '{anomaly_name!="", anomaly_select="", anomaly_strategy="robust"}'


def _seasonal(lag: str, offset: str) -> str:
    return f"""\
      - record: anchor_robust:median_seasonality_{lag}
        expr: quantile_over_time(0.5, anchor_robust:select[1h] offset {offset})
      - record: anchor_robust:abs_dev_seasonality_{lag}
        expr: abs(anchor_robust:select offset {offset} - anchor_robust:median_seasonality_{lag})
      - record: anchor_robust:mad_seasonality_{lag}
        expr: quantile_over_time(0.5, anchor_robust:abs_dev_seasonality_{lag}[1h])
"""


def _robust_band(side: str, sign: str, aggregate: str) -> str:
    return f"""\
      - record: anchor_robust:{side}_seasonality_band
        expr: |
          {aggregate} without (look_back) (
            label_replace(
              anchor_robust:median_seasonality_1w {sign} anchor_robust:mad_seasonality_1w * 2,
              "look_back", "1w", "", ""
            )
            or
            label_replace(
              anchor_robust:median_seasonality_1d {sign} anchor_robust:mad_seasonality_1d * 2,
              "look_back", "1d", "", ""
            )
          )
"""


_SEASONAL_BANDS = _robust_band("upper", "+", "max") + _robust_band("lower", "-", "min")

ROBUST = f"""\
groups:
  - name: anchor-robust
    interval: 1m
    rules:
      - record: anchor_robust:select
        expr: |
          (
            {_RTAGGED} > 0
            unless avg_over_time({_RTAGGED}[1h]) < 5/60
          )
          or
          {_RANY} > 0
        labels:
          anomaly_select: "1"
      # The median of the last day, and the median absolute deviation from it.
      - record: anchor_robust:median_lt
        expr: quantile_over_time(0.5, anchor_robust:select[1d])
      - record: anchor_robust:abs_dev_lt
        expr: abs(anchor_robust:select - anchor_robust:median_lt)
      - record: anchor_robust:mad_lt
        expr: quantile_over_time(0.5, anchor_robust:abs_dev_lt[1d])
      - record: anchor_robust:margin
        expr: anchor_robust:median_lt * 0.5
      - record: anchor_robust:level
        expr: quantile_over_time(0.5, anchor_robust:select[1h])
      - record: anchor_robust:lower_band
        expr: |
          clamp_min(
            min without (prediction_type) (
              label_replace(
                last_over_time(anchor_robust:median_lt[2m]) - last_over_time(anchor_robust:mad_lt[2m]) * 2,
                "prediction_type", "short_term", "", ""
              )
              or
              label_replace(
                last_over_time(anchor_robust:median_lt[2m]) - last_over_time(anchor_robust:margin[2m]),
                "prediction_type", "margin", "", ""
              )
              or
              last_over_time(anchor_robust:lower_seasonality_band[10m])
            ),
            0
          )
      - record: anchor_robust:upper_band
        expr: |
          max without (prediction_type) (
            label_replace(
              last_over_time(anchor_robust:median_lt[2m]) + last_over_time(anchor_robust:mad_lt[2m]) * 2,
              "prediction_type", "short_term", "", ""
            )
            or
            label_replace(
              last_over_time(anchor_robust:median_lt[2m]) + last_over_time(anchor_robust:margin[2m]),
              "prediction_type", "margin", "", ""
            )
            or
            last_over_time(anchor_robust:upper_seasonality_band[10m])
          )

  - name: anchor-robust-seasonal
    interval: 5m
    rules:
{_seasonal("1w", "167h45m")}{_seasonal("1d", "23h45m")}{_SEASONAL_BANDS}
  - name: anchor-robust-alerts
    rules:
      - alert: AnchorRobustAnomaly
        expr: |
          last_over_time(anchor_robust:level[2m]) < last_over_time(anchor_robust:lower_band[2m])
          or
          last_over_time(anchor_robust:level[2m]) > last_over_time(anchor_robust:upper_band[2m])
        for: 5m
        labels:
          severity: warning
"""

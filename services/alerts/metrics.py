"""Prometheus metrics of the alerts service (prefix `ams_`, base units, counters `_total`)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

ALERTS_FIRING = Gauge("ams_alerts_firing", "Alerts currently firing", ["severity"])
NOTIFICATIONS_SENT = Counter(
    "ams_alert_notifications_sent_total", "Notifications a receiver accepted (2xx)", ["receiver"]
)
NOTIFICATIONS_FAILED = Counter(
    "ams_alert_notifications_failed_total",
    "Delivery attempts that failed (will be retried unless dead)",
    ["receiver"],
)
NOTIFICATIONS_DEAD = Counter(
    "ams_alert_notifications_dead_total",
    "Notifications given up (rejected, or older than max_age_s)",
    ["receiver"],
)
DELIVERY_LATENCY = Histogram(
    "ams_alert_delivery_latency_seconds",
    "From the notification's creation (state change commit) to the receiver's 2xx",
    ["receiver"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 1800, 3600),
)
OUTBOX_DEPTH = Gauge("ams_alert_outbox_depth", "Notifications waiting to be delivered")
OUTBOX_OLDEST_AGE = Gauge(
    "ams_alert_outbox_oldest_age_seconds", "Age of the oldest notification not yet delivered (0 when none)"
)
INCIDENTS_OPEN = Gauge("ams_incidents_open", "Incidents open (at least one member alert firing)")
INCIDENTS_OPENED = Counter("ams_incidents_opened_total", "Incidents opened (alerts with one root cause)")
_RESPONSE_BUCKETS = (60, 300, 900, 1800, 3600, 2 * 3600, 4 * 3600, 8 * 3600, 86400, 3 * 86400, 7 * 86400)
INCIDENT_TIME_TO_ACK = Histogram(
    "ams_incident_time_to_acknowledge_seconds",
    "From an incident's first alert to its acknowledgement (MTTA = sum / count)",
    buckets=_RESPONSE_BUCKETS,
)
INCIDENT_TIME_TO_RESOLVE = Histogram(
    "ams_incident_time_to_resolve_seconds",
    "From an incident's first alert to its resolution (MTTR = sum / count)",
    buckets=_RESPONSE_BUCKETS,
)

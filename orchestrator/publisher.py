"""The publisher alone, for a team's existing deployment: `orchestrator.publisher:defs` in its workspace.yaml.

No assets, no schedules: only `ams_event_publisher`, which reads the instance's event log and so publishes the
runs and materializations of every code location of the deployment. Discovery reads the assets of every
location from the webserver (`dagster.url`); see README "Add to an existing Dagster deployment".
"""

from __future__ import annotations

from dagster import Definitions

from orchestrator.sensors import build_event_sensor

defs = Definitions(sensors=[build_event_sensor()])

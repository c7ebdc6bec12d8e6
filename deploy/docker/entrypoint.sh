#!/bin/sh
# Container entrypoint: prepares DAGSTER_HOME, installs the Dagster instance config, then runs the command.
#   DAGSTER_INSTANCE_CONFIG  optional path of a dagster.yaml (e.g. /app/deploy/dagster/dagster.prod.yaml);
#                            copied atomically to $DAGSTER_HOME/dagster.yaml, since Dagster reads it there.
set -eu
: "${DAGSTER_HOME:?DAGSTER_HOME must be set}"
mkdir -p "$DAGSTER_HOME"
if [ -n "${AMS_STORES__DATA_DIR:-}" ]; then
  mkdir -p "$AMS_STORES__DATA_DIR"
fi
if [ -n "${DAGSTER_INSTANCE_CONFIG:-}" ]; then
  if [ ! -r "$DAGSTER_INSTANCE_CONFIG" ]; then
    echo "entrypoint: DAGSTER_INSTANCE_CONFIG=$DAGSTER_INSTANCE_CONFIG is not readable" >&2
    exit 64
  fi
  target="$DAGSTER_HOME/dagster.yaml"
  if ! cmp -s "$DAGSTER_INSTANCE_CONFIG" "$target" 2>/dev/null; then
    # Several containers may share one DAGSTER_HOME volume: write a temp file and rename it into place.
    tmp="$DAGSTER_HOME/.dagster.yaml.$$"
    cp "$DAGSTER_INSTANCE_CONFIG" "$tmp"
    mv -f "$tmp" "$target"
  fi
fi
exec "$@"

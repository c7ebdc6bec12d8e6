#!/bin/sh
# Container entrypoint (also in front of the HEALTHCHECK): reads secrets from files, prepares DAGSTER_HOME,
# installs the Dagster instance config, then runs the command.
#   <NAME>_FILE              for <NAME> ending in PASSWORD, SECRET, TOKEN or KEY: a file holding its value
#                            (compose `secrets:`, mounted secret volumes), e.g.
#                            AMS_REDIS__PASSWORD_FILE=/run/secrets/redis_password. Secrets stay out of the
#                            container's configuration (`docker inspect`). Setting both is an error. (Other
#                            *_FILE variables, like SSL_CERT_FILE or AMS_LOGGING__FILE, name files and stay.)
#   DAGSTER_CELERY_BROKER_URL, DAGSTER_CELERY_BACKEND_URL
#                            Celery shares the system's Redis: a redis:// URL given without credentials gets
#                            AMS_REDIS__PASSWORD (which must then be URL-safe: letters, digits, . _ ~ -).
#   DAGSTER_INSTANCE_CONFIG  optional path of a dagster.yaml (e.g. /app/deploy/dagster/dagster.prod.yaml);
#                            copied atomically to $DAGSTER_HOME/dagster.yaml, since Dagster reads it there.
set -eu

fail() {
  echo "entrypoint: $*" >&2
  exit 64
}

for name in $(env | sed -n 's/^\([A-Za-z0-9_]*\(PASSWORD\|SECRET\|TOKEN\|KEY\)\)_FILE=.*/\1/p'); do
  eval "file=\${${name}_FILE}"
  eval "already=\${${name}+set}"
  [ -z "$already" ] || fail "both $name and ${name}_FILE are set; keep one"
  [ -f "$file" ] && [ -r "$file" ] || fail "${name}_FILE=$file is not a readable file"
  value=$(cat "$file")  # command substitution drops the trailing newline
  export "$name=$value"
  unset "${name}_FILE"  # the settings would take AMS_X__PASSWORD_FILE for an unknown field
done

if [ -n "${AMS_REDIS__PASSWORD:-}" ]; then
  for name in DAGSTER_CELERY_BROKER_URL DAGSTER_CELERY_BACKEND_URL; do
    eval "url=\${$name:-}"
    case $url in
      redis://*@* | "") ;;
      redis://*)
        case $AMS_REDIS__PASSWORD in
          *[!A-Za-z0-9._~-]*) fail "AMS_REDIS__PASSWORD must be URL-safe (letters, digits, . _ ~ -) for $name" ;;
        esac
        export "$name=redis://:${AMS_REDIS__PASSWORD}@${url#redis://}"
        ;;
    esac
  done
fi

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

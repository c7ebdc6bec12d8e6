#!/usr/bin/env bash
# Installs the Debian tools that some tests use, when they are missing and we may (root with apt-get).
# Without them those tests skip with the reason (and fail under AMS_FAIL_ON_SKIP=1, as in CI).
set -u
declare -A wanted=(
  [odbcinst]=unixodbc
  [promtool]=prometheus
  [docker-compose]=docker-compose
  [kubectl]=kubectl
  [redis-server]=redis-server
  [openssl]=openssl
  # tests/deploy: Prometheus itself (live scrape test), the compose healthchecks' wget and redis-cli
  [prometheus]=prometheus
  [wget]=wget
  [redis-cli]=redis-tools
  # tests/deploy/test_prometheus*.py: Alertmanager and amtool
  [amtool]=prometheus-alertmanager
  # tests/deploy/test_image.py: build and run the image without a Docker engine
  [podman]=podman
  [buildah]=buildah
  [debootstrap]=debootstrap
  [runc]=runc
)
missing=()
for tool in "${!wanted[@]}"; do
  command -v "$tool" >/dev/null 2>&1 || missing+=("${wanted[$tool]}")
done
# ODBC drivers are libraries, not commands: look for their registration.
for pkg in odbc-postgresql libsqliteodbc; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
# PostgreSQL for the store and ODBC tests: the tests start a throwaway cluster from Debian's binaries when
# no server answers on 127.0.0.1:5432.
ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing+=(postgresql)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then
  echo "install-test-tools: not root or no apt-get; tests needing ${missing[*]} will skip" >&2
  exit 0
fi
echo "install-test-tools: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
for pkg in "${missing[@]}"; do
  # wait for a concurrent apt/dpkg (another installer) instead of failing at once on its lock
  apt-get install -y -qq --no-install-recommends -o DPkg::Lock::Timeout=600 "$pkg" >/dev/null 2>&1 \
    || echo "install-test-tools: could not install $pkg; tests needing it will skip" >&2
done
exit 0

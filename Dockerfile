# syntax=docker/dockerfile:1.7
# One image for every process of the system; the command picks the role:
#   dagster code-server start -h 0.0.0.0 -p 4000 -m orchestrator.definitions   (code location, gRPC)
#   dagster-webserver -h 0.0.0.0 -p 3000 -w /app/deploy/dagster/workspace.yaml (UI, the default)
#   dagster-daemon run -w /app/deploy/dagster/workspace.yaml                     (schedules, sensors, run queue)
#   python -m services.discovery | services.health | services.alerts             (workers, :9101-9103)
#   dagster-celery worker start -A dagster_celery.app -y /app/deploy/dagster/celery.yaml ...  (prod runs, steps)
#   asset-manager ...                                                             (CLI)
# Build: docker build -t dagster-asset-management:latest .
#   --build-arg INSTALL_MSODBC=0   without Microsoft's ODBC Driver 18 for SQL Server (no packages.microsoft.com)
#   --build-arg PYTHON_IMAGE=...   another Debian-based Python 3.11+ image (tests/deploy/test_image.py uses one)
# Python packages come from requirements.lock (exact versions, hashes checked): `make lock` regenerates it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG INSTALL_MSODBC=1

# ---- deps: the locked packages, built with compilers and headers that stay in this stage ------------------
FROM ${PYTHON_IMAGE} AS deps
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# Debian's current packages of the base image's release, security fixes included: a pinned Debian version
# disappears from the mirror at the next point release and would break every later build.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential unixodbc-dev libpq-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first, exactly as locked: this layer is rebuilt only when requirements.lock changes.
COPY requirements.lock ./
RUN pip install --no-deps --require-hashes -r requirements.lock \
 && pip check

# ---- msodbc: fetches Microsoft's repository package (curl stays in this stage) ----------------------------
FROM ${PYTHON_IMAGE} AS msodbc
ARG INSTALL_MSODBC
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN mkdir -p /tmp/msodbc \
 && if [ "$INSTALL_MSODBC" = 1 ]; then \
      apt-get update \
      && apt-get install -y --no-install-recommends curl ca-certificates \
      && debian=$(grep VERSION_ID /etc/os-release | cut -d '"' -f 2 | cut -d '.' -f 1) \
      && curl -fsSL -o /tmp/msodbc/packages-microsoft-prod.deb \
           "https://packages.microsoft.com/config/debian/${debian}/packages-microsoft-prod.deb"; \
    fi

# ---- runtime ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG INSTALL_MSODBC
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
LABEL org.opencontainers.image.title="dagster-asset-management" \
      org.opencontainers.image.description="Dagster code location, webserver, daemon and the discovery/health/alerts workers"
# ODBC Driver 18 for SQL Server the way Microsoft documents it for Debian: register their repository with
# packages-microsoft-prod.deb, then `ACCEPT_EULA=Y apt-get install msodbcsql18` (pulls unixODBC); plus the
# unixODBC tools (odbcinst) and libpq for PostgreSQL. tini reaps the subprocesses Dagster spawns.
COPY --from=msodbc /tmp/msodbc /tmp/msodbc
# hadolint ignore=DL3008
RUN msodbc=() \
 && if [ "$INSTALL_MSODBC" = 1 ]; then dpkg -i /tmp/msodbc/packages-microsoft-prod.deb && msodbc=(msodbcsql18); fi \
 && rm -rf /tmp/msodbc \
 && apt-get update \
 && ACCEPT_EULA=Y apt-get install -y --no-install-recommends "${msodbc[@]}" unixodbc odbcinst libpq5 tini \
 && rm -rf /var/lib/apt/lists/* \
 && if [ "$INSTALL_MSODBC" = 1 ]; then odbcinst -q -d -n "ODBC Driver 18 for SQL Server"; fi

ARG APP_UID=10001
# Mount points exist in the image, owned by app, so a fresh named volume is created writable for the user.
RUN groupadd --system --gid ${APP_UID} app \
 && useradd --system --uid ${APP_UID} --gid app --home-dir /var/lib/ams --shell /usr/sbin/nologin app \
 && install -d -o app -g app -m 0750 /var/lib/ams /var/lib/ams/dagster_home /var/lib/ams/stores /var/lib/ams/shared

# The locked packages: this large layer is reused until requirements.lock changes.
COPY --from=deps /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The project itself, editable at /app so settings find /app/config (PROJECT_ROOT) exactly as in a checkout.
WORKDIR /app
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY orchestrator ./orchestrator
COPY services ./services
COPY asset_manager ./asset_manager
COPY config ./config
COPY deploy/docker ./deploy/docker
COPY deploy/dagster ./deploy/dagster
RUN PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 pip install --no-deps -e . \
 && rm -rf ./build ./*.egg-info \
 && python -m compileall -q /app/libs /app/orchestrator /app/services /app/asset_manager

# Containers log JSON lines to stdout (the runtime collects and rotates them); the file log is disabled
# by pointing it at /dev/null, which RotatingFileHandler never rotates.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENVIRONMENT=production \
    AMS_CONFIG_DIR=/app/config \
    DAGSTER_HOME=/var/lib/ams/dagster_home \
    AMS_STORES__DATA_DIR=/var/lib/ams/stores \
    AMS_LOGGING__FORMAT=json \
    AMS_LOGGING__FILE=/dev/null \
    DAGSTER_GRPC_HOST=code-location \
    DAGSTER_GRPC_PORT=4000

USER ${APP_UID}:${APP_UID}
EXPOSE 3000 4000 9101 9102 9103

# The probe finds the container's role from its processes (or AMS_HEALTHCHECK_URL); compose and k8s set theirs.
# Through the entrypoint, so that secrets given as files (*_FILE) are in its environment too.
HEALTHCHECK --interval=30s --timeout=30s --start-period=60s --retries=3 \
  CMD ["/app/deploy/docker/entrypoint.sh", "python", "/app/deploy/docker/healthcheck.py"]

ENTRYPOINT ["/usr/bin/tini", "--", "/app/deploy/docker/entrypoint.sh"]
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/app/deploy/dagster/workspace.yaml"]

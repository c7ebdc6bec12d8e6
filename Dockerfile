# syntax=docker/dockerfile:1.7
# One image for every process of the system; the command picks the role:
#   dagster code-server start -h 0.0.0.0 -p 4000 -m orchestrator.definitions   (code location, gRPC)
#   dagster-webserver -h 0.0.0.0 -p 3000 -w /app/deploy/dagster/workspace.yaml (UI, the default)
#   dagster-daemon run -w /app/deploy/dagster/workspace.yaml                     (schedules, sensors, run queue)
#   python -m services.discovery | services.health | services.alerts             (workers, :9101-9103)
#   dagster-celery worker start -A dagster_celery.app -y /app/deploy/dagster/celery.yaml  (prod run workers)
#   asset-manager ...                                                             (CLI)
# Build: docker build -t dagster-asset-management:latest .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- builder: compilers and headers live here only -----------------------------------------------------
FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential unixodbc-dev libpq-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /app
# Dependencies first (cached while only the source changes): install the project's metadata with stub packages.
COPY pyproject.toml README.md ./
RUN mkdir -p libs orchestrator services asset_manager \
 && touch libs/__init__.py orchestrator/__init__.py services/__init__.py asset_manager/__init__.py \
 && pip install --upgrade pip setuptools wheel \
 && pip install ".[deploy]" \
 && pip uninstall -y dagster-asset-management \
 && rm -rf libs orchestrator services asset_manager build *.egg-info
# The project itself, editable at /app so settings find /app/config (PROJECT_ROOT) exactly as in a checkout.
COPY libs ./libs
COPY orchestrator ./orchestrator
COPY services ./services
COPY asset_manager ./asset_manager
COPY config ./config
COPY deploy/docker ./deploy/docker
COPY deploy/dagster ./deploy/dagster
RUN pip install --no-deps -e . && python -m compileall -q /app/libs /app/orchestrator /app/services /app/asset_manager

# ---- msodbc: fetches Microsoft's repository package (curl stays in this stage) ----------------------------
FROM ${PYTHON_IMAGE} AS msodbc
RUN apt-get update \
 && apt-get install -y --no-install-recommends curl ca-certificates \
 && curl -sSL -o /tmp/packages-microsoft-prod.deb \
      "https://packages.microsoft.com/config/debian/$(grep VERSION_ID /etc/os-release | cut -d '"' -f 2 | cut -d '.' -f 1)/packages-microsoft-prod.deb"

# ---- runtime ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="dagster-asset-management" \
      org.opencontainers.image.description="Dagster code location, webserver, daemon and the discovery/health/alerts workers"
# ODBC Driver 18 for SQL Server the way Microsoft documents it for Debian: register their repository with
# packages-microsoft-prod.deb, then `ACCEPT_EULA=Y apt-get install msodbcsql18` (pulls unixODBC); plus the
# unixODBC tools (odbcinst) and libpq for PostgreSQL. tini reaps the subprocesses Dagster spawns.
COPY --from=msodbc /tmp/packages-microsoft-prod.deb /tmp/packages-microsoft-prod.deb
RUN dpkg -i /tmp/packages-microsoft-prod.deb \
 && rm /tmp/packages-microsoft-prod.deb \
 && apt-get update \
 && ACCEPT_EULA=Y apt-get install -y --no-install-recommends msodbcsql18 unixodbc libpq5 tini \
 && rm -rf /var/lib/apt/lists/* \
 && odbcinst -q -d -n "ODBC Driver 18 for SQL Server"

ARG APP_UID=10001
# Mount points exist in the image, owned by app, so a fresh named volume is created writable for the user.
RUN groupadd --system --gid ${APP_UID} app \
 && useradd --system --uid ${APP_UID} --gid app --home-dir /var/lib/ams --shell /usr/sbin/nologin app \
 && install -d -o app -g app -m 0750 /var/lib/ams /var/lib/ams/dagster_home /var/lib/ams/stores /var/lib/ams/shared

COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app

# Containers log JSON lines to stdout (the runtime collects and rotates them); the file log is disabled
# by pointing it at /dev/null, which RotatingFileHandler never rotates.
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    ENVIRONMENT=production \
    AMS_CONFIG_DIR=/app/config \
    DAGSTER_HOME=/var/lib/ams/dagster_home \
    AMS_STORES__DATA_DIR=/var/lib/ams/stores \
    AMS_LOGGING__FORMAT=json \
    AMS_LOGGING__FILE=/dev/null \
    DAGSTER_GRPC_HOST=code-location \
    DAGSTER_GRPC_PORT=4000

WORKDIR /app
USER ${APP_UID}:${APP_UID}
EXPOSE 3000 4000 9101 9102 9103

# The probe finds the container's role from its processes (or AMS_HEALTHCHECK_URL); compose and k8s set theirs.
HEALTHCHECK --interval=30s --timeout=30s --start-period=60s --retries=3 \
  CMD ["python", "/app/deploy/docker/healthcheck.py"]

ENTRYPOINT ["/usr/bin/tini", "--", "/app/deploy/docker/entrypoint.sh"]
CMD ["dagster-webserver", "-h", "0.0.0.0", "-p", "3000", "-w", "/app/deploy/dagster/workspace.yaml"]

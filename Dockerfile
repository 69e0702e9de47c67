# syntax=docker/dockerfile:1
# One image for every streamloop service; the command picks what runs:
#
#   docker build -t streamloop:dev --build-arg STREAMLOOP_GIT_SHA="$(git rev-parse HEAD)" .
#   docker run --rm streamloop:dev service featurizer      # a service (see `streamloop service --help`)
#   docker run --rm streamloop:dev lag                     # any other CLI command
#   docker run --rm --entrypoint python streamloop:dev /app/deploy/create_topics.py   # topics + schemas
#
# Layout: the virtualenv in /opt/streamloop (root-owned, read-only at run time), the contracts in
# /app/schemas (STREAMLOOP_SCHEMAS_DIR), the demo pipeline in /app/examples, writable state in
# /var/lib/streamloop (owned by uid 10001; the artifact store's shared volume mounts at
# /var/lib/streamloop/artifacts). docs/operations.md describes the deployment around it.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv with streamloop and its runtime dependencies (no dev extra) -----------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ONLY_BINARY=:all:
# Every dependency ships manylinux wheels for CPython 3.11, so no compiler is installed and
# PIP_ONLY_BINARY makes a dependency that stops shipping one fail the build instead of compiling.
RUN python -m venv /opt/streamloop
ENV PATH=/opt/streamloop/bin:$PATH
WORKDIR /src
COPY pyproject.toml README.md ./
COPY libs ./libs
COPY services ./services
# The OTLP span exporter is not a project dependency (telemetry falls back to no export without it);
# the image carries it so OTEL_TRACES_EXPORTER=otlp works. Resolved together with the project, so
# it matches the opentelemetry-sdk that streamloop pins.
ARG OTLP_EXPORTER="opentelemetry-exporter-otlp-proto-http>=1.25,<2"
# streamloop itself is the one package built from source (pure Python, no compiler needed).
RUN PIP_NO_BINARY=streamloop pip install . "${OTLP_EXPORTER}" \
 && streamloop --help > /dev/null

# --- runtime -----------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS runtime
ARG STREAMLOOP_GIT_SHA=""
LABEL org.opencontainers.image.title="streamloop" \
      org.opencontainers.image.description="Closed-loop ML on Kafka event streams: every streamloop service, chosen by the command." \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.revision="${STREAMLOOP_GIT_SHA}"
RUN groupadd --system --gid 10001 streamloop \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/streamloop --no-create-home \
            --shell /usr/sbin/nologin streamloop \
 && mkdir -p /var/lib/streamloop/state /var/lib/streamloop/artifacts \
 && chown -R 10001:10001 /var/lib/streamloop
COPY --from=build /opt/streamloop /opt/streamloop
COPY schemas /app/schemas
COPY examples /app/examples
COPY deploy/create_topics.py deploy/healthcheck.py /app/deploy/
# Containers bind every interface (the code's defaults are loopback-only for local runs);
# 9464 is the metrics port Prometheus scrapes, 50051 the scorer's gRPC port.
ENV PATH=/opt/streamloop/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/var/lib/streamloop \
    STREAMLOOP_GIT_SHA=${STREAMLOOP_GIT_SHA} \
    STREAMLOOP_SCHEMAS_DIR=/app/schemas \
    STREAMLOOP_PIPELINE=/app/examples/card_fraud/pipeline.yaml \
    STREAMLOOP_ARTIFACT_STORE=file:///var/lib/streamloop/artifacts \
    STREAMLOOP_METRICS_HOST=0.0.0.0 \
    STREAMLOOP_METRICS_PORT=9464 \
    SCORER_GRPC_HOST=0.0.0.0 \
    SCORER_GRPC_PORT=50051
# Relative paths a service may write (faust's table data directory) land in the writable state dir.
WORKDIR /var/lib/streamloop/state
USER 10001:10001
EXPOSE 9464 50051
ENTRYPOINT ["streamloop"]
CMD ["--help"]

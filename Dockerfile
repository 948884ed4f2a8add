# syntax=docker/dockerfile:1
# Coalition server image. With PostgreSQL and two replicas behind one address:
#   docker compose up --build            (see docker-compose.yml and docs/operator.md)
# Alone, on the embedded SQLite store in the /data volume:
#   docker build -t coalition-server . && docker run -p 50051:50051 coalition-server

# Build the wheel in a throwaway stage, so no source tree is left in the image's layers.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN pip wheel --no-deps --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install "$(ls /wheels/coalition-*.whl)[server]"

# An unprivileged user owns the data directory (signing keys, SQLite file and, by default,
# the key-encryption keys in /data/keks) and /keks, where compose mounts the key-encryption
# keys shared by replicas. 0700: the server refuses key directories others can read, and a
# named volume mounted on either starts with this owner and mode.
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home coalition \
    && mkdir -p /data /keks \
    && chown coalition:coalition /data /keks \
    && chmod 0700 /data /keks
USER coalition
WORKDIR /data
VOLUME ["/data"]

# Settings as environment, so that every subcommand (migrate, init-keys, health) sees them.
# Flags and `-e`/compose environment override them; a --config file does not (the
# environment wins over the file), so change these two by flag or environment.
ENV COALITION_LISTEN=0.0.0.0:50051 \
    COALITION_DATA_DIR=/data

# gRPC, and Prometheus metrics when started with --metrics-listen 0.0.0.0:9464.
EXPOSE 50051 9464

# grpc.health.v1 Check on COALITION_LISTEN's port: healthy only while SERVING.
HEALTHCHECK --interval=10s --timeout=5s --start-period=20s --retries=3 \
    CMD ["coalition-server", "health"]

ENTRYPOINT ["coalition-server"]
CMD ["serve"]

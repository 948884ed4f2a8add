# Coalition server image: `docker compose up` (see docker-compose.yml) or
#   docker build -t coalition-server . && docker run -p 50051:50051 coalition-server
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Only what the package needs; the generated protobuf code is part of client/ in the repo.
WORKDIR /src
COPY pyproject.toml README.md ./
COPY client ./client
COPY server ./server
RUN pip install ".[server]" && rm -rf /src

# Unprivileged user owning the data directory (SQLite file, log key, key-encryption keys).
RUN useradd --system --uid 10001 --user-group --home-dir /data --no-create-home coalition \
    && mkdir -p /data \
    && chown coalition:coalition /data
USER coalition
WORKDIR /data
VOLUME ["/data"]

EXPOSE 50051
ENTRYPOINT ["coalition-server"]
CMD ["--listen", "0.0.0.0:50051", "--data-dir", "/data"]

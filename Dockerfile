# syntax=docker/dockerfile:1
# One image for every process: the API (default command), the dramatiq worker, the clock and the
# two mock vendors; docker-compose.yml picks each one's command.

# Wheels for every requirement, built where a compiler is: gunicorn_h1c (gunicorn's C HTTP parser)
# comes as source only. The final image installs these and carries no compiler.
FROM python:3.11-slim AS wheels
RUN apt-get update && apt-get install -y --no-install-recommends gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
COPY requirements.txt ./
RUN pip wheel --no-cache-dir --wheel-dir /wheels -r requirements.txt

FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PORT=4000

WORKDIR /app

# A fixed, unprivileged user, owning the metrics folder that api, worker and clock share
# (a named volume mounted there starts with this ownership).
RUN useradd --create-home --uid 10001 --user-group app \
    && mkdir /metrics && chown app:app /metrics
ENV PROMETHEUS_MULTIPROC_DIR=/metrics

# Dependencies first, so code changes reuse this layer. Production requirements only: containers
# always get REDIS_URL and MONGODB_URI pointing at real servers, never the embedded ones.
COPY requirements.txt ./
RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels -r requirements.txt

# Owned by root and read-only to the app user.
COPY . .

USER app

EXPOSE 4000

# Same as the Procfile's web line; service/gunicorn_conf.py binds 0.0.0.0:$PORT.
CMD ["gunicorn", "--config", "service/gunicorn_conf.py", "service.app:create_app()"]

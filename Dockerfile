# The Countersign image: worker, codec server, approval gateway and CLI (`countersign …`).
# docker build -t countersign .   then e.g.   docker run countersign worker
FROM python:3.11-slim

# The repo root comes first on the path: `agents` and `guardrails` must resolve to this
# project, never to a same-named distribution (see README, "Package names").
WORKDIR /app
ENV PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    COUNTERSIGN_STATE_DIR=/var/lib/countersign

COPY pyproject.toml README.md ./
COPY workers ./workers
COPY agents ./agents
COPY activities ./activities
COPY guardrails ./guardrails
COPY demo ./demo
RUN pip install --editable . \
    && useradd --system --uid 10001 --home-dir /var/lib/countersign countersign \
    && mkdir -p /var/lib/countersign \
    && chown countersign /var/lib/countersign

USER countersign
VOLUME ["/var/lib/countersign"]
ENTRYPOINT ["countersign"]
CMD ["worker"]

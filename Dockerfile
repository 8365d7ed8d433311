# The Countersign image: worker, codec server, approval gateway and CLI (`countersign …`).
# docker build -t countersign .   then e.g.   docker run countersign worker
FROM python:3.11-slim

# Installed as users install it: the wheel, one package `countersign` (the card's folders are
# its subpackages, linked in countersign/; see README, "Package names"). The source goes after.
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_NO_CACHE_DIR=1 \
    COUNTERSIGN_STATE_DIR=/var/lib/countersign

COPY pyproject.toml README.md /src/
COPY countersign /src/countersign
COPY workers /src/workers
COPY agents /src/agents
COPY activities /src/activities
COPY guardrails /src/guardrails
COPY demo /src/demo
RUN pip install /src \
    && rm -rf /src \
    && useradd --system --uid 10001 --home-dir /var/lib/countersign countersign \
    && mkdir -p /var/lib/countersign \
    && chown countersign /var/lib/countersign

USER countersign
WORKDIR /var/lib/countersign
VOLUME ["/var/lib/countersign"]
ENTRYPOINT ["countersign"]
CMD ["worker"]

# One image for the coordinator CLI (`retention ...`) and the example services
# (`python -m services.<name>`); docker-compose.yml runs it with different commands.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Metadata first, then the four packages pyproject.toml ships; tests and tools stay out.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY coordinator ./coordinator
COPY consumer_sdk ./consumer_sdk
COPY services ./services
RUN pip install . && useradd --system --uid 10001 --no-create-home retention

USER retention
CMD ["retention", "--help"]

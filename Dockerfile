# One image for the coordinator CLI (`retention ...`), the example services
# (`python -m services.<name>`, search_index included: the `faust` extra) and the demo
# seeding and tokens (`python -m demo seed|tokens`, demo/policies.yaml); docker-compose.yml runs it with
# different commands.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# Metadata first, then the four packages pyproject.toml ships; tests and tools stay out.
# demo/ is not installed: `python -m demo seed` runs it from the working directory.
COPY pyproject.toml README.md ./
COPY schemas ./schemas
COPY coordinator ./coordinator
COPY consumer_sdk ./consumer_sdk
COPY services ./services
# /var/lib/retention: the API tokens file's volume (docker-compose.yml), writable by the user.
RUN pip install ".[faust]" && useradd --system --uid 10001 --no-create-home retention \
    && install -d -o retention -m 0700 /var/lib/retention

COPY demo ./demo

USER retention
CMD ["retention", "--help"]

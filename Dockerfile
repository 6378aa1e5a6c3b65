# One image for every process of the stack (see docker-compose.yml): migrate, worker,
# beat and flower differ only in their command.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# The pinned dependencies first, so a code change does not reinstall them.
COPY requirements.lock /tmp/requirements.lock
RUN pip install -r /tmp/requirements.lock && rm /tmp/requirements.lock

# Then the project itself; its dependencies are already there.
COPY pyproject.toml README.md /src/
COPY shared /src/shared
COPY worker /src/worker
COPY entrypoints /src/entrypoints
RUN pip install --no-deps /src && rm -rf /src

RUN useradd --create-home --home-dir /app --uid 10001 --user-group credits
USER credits
WORKDIR /app

CMD ["credits", "--help"]

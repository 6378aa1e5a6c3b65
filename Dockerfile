# One image for every process of the stack (see docker-compose.yml): migrate, worker,
# beat and flower differ only in their command. A pinned base image: a rebuild months
# later gets the same Python, and an upgrade is a reviewed change of this line.
FROM python:3.11.16-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# Runtime dependencies only: requirements.lock, never requirements-dev.lock (pytest,
# hypothesis, ruff...). --no-deps installs exactly the lock, and pip check fails the build
# if the lock forgot something a package needs. First, so a code change does not
# reinstall them.
COPY requirements.lock /tmp/requirements.lock
RUN pip install --no-deps -r /tmp/requirements.lock && pip check && rm /tmp/requirements.lock

# Then the project itself; its dependencies are already there. The build context holds
# only the files .dockerignore lets in (the packages, pyproject.toml, README.md, the
# runtime lock, the migrate scripts), so a new package needs a line there, not here.
COPY . /src/
RUN pip install --no-deps /src && pip check && rm -rf /src

RUN useradd --create-home --home-dir /app --uid 10001 --user-group credits
USER credits
WORKDIR /app

CMD ["credits", "--help"]

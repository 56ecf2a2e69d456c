# syntax=docker/dockerfile:1
# taskproc image: one image runs `taskproc api`, `taskproc worker` and `taskproc migrate`.
#   docker build -t taskproc:dev .
# Stage 1 installs the locked dependencies and taskproc into a virtualenv; stage 2 copies only that virtualenv
# onto a slim Python base: no compiler, no pip cache, no sources. Runs as a numeric non-root user and writes only to
# /tmp, so it works with readOnlyRootFilesystem.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# Package index settings for pip, given by scripts/image.sh from the host's pip; build stage only.
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ARG PIP_TRUSTED_HOST
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# The locked runtime dependencies (requirements/runtime.txt, `make lock`), hash-checked, in their own layer that
# only a lock change rebuilds; then taskproc itself without dependencies and without extras, so the image holds
# exactly the versions the suite ran and none of the embedded servers. pip check: the lock covers pyproject.toml.
COPY requirements/runtime.txt ./requirements/
RUN python -m venv /opt/taskproc \
 && /opt/taskproc/bin/pip install --prefer-binary --require-hashes -r requirements/runtime.txt
COPY pyproject.toml README.md ./
COPY src ./src
RUN /opt/taskproc/bin/pip install --no-deps . \
 && /opt/taskproc/bin/pip check \
 && /opt/taskproc/bin/python -m compileall -q /opt/taskproc/lib

FROM ${PYTHON_IMAGE}
LABEL org.opencontainers.image.title="taskproc" \
      org.opencontainers.image.description="Kubernetes-native task processing service: REST API, arq workers, Postgres task state" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 taskproc \
 && useradd --system --uid 10001 --gid 10001 --home-dir /tmp --no-create-home --shell /usr/sbin/nologin taskproc
COPY --from=build /opt/taskproc /opt/taskproc
ENV PATH=/opt/taskproc/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    TMPDIR=/tmp \
    TASKPROC_LOG_FORMAT=json
WORKDIR /tmp
USER 10001:10001
EXPOSE 8000 9100
ENTRYPOINT ["taskproc"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]

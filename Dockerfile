# charlm serving image: ONNX Runtime, no torch, the shipped models baked in at /models.
#
#   make docker                      # charlm:<version> and charlm:latest, with the build's version labels
#   docker build -t charlm .         # any builder, BuildKit or legacy (labels: "unknown" revision)
#   docker build -f deploy/torch.Dockerfile -t charlm:torch .      # adds torch for --backend torchscript
#
# Stages: deps (venv from requirements/serve.lock) and code (the project, built apart) -> serve, the last
# stage and so the default. The legacy builder (docker without buildx) builds every stage above its target,
# which is why the torch image has its own Dockerfile instead of a stage here.
# Layers, biggest and most stable first: dependencies (one layer), models, then the project's code (a few
# hundred KB), so a code change ships only the last layer.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS deps
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
# Every dependency pinned with its sha256 (`make lock` regenerates the file); nothing else is resolved here.
COPY requirements/serve.lock /tmp/serve.lock
# The serving image needs neither pip nor the packages' own test suites (about 40 MB together).
RUN python -m venv /opt/venv \
 && /opt/venv/bin/pip install -q --no-deps --require-hashes -r /tmp/serve.lock \
 && /opt/venv/bin/pip uninstall -y -q setuptools pip \
 && find /opt/venv -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} + \
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib >/dev/null


FROM ${PYTHON_IMAGE} AS code
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY pyproject.toml ./
COPY contract ./contract
COPY engine ./engine
COPY service ./service
COPY training ./training
# The build backend too comes pinned with hashes (requirements/build.lock), not whatever PyPI has today.
COPY requirements/build.lock /tmp/build.lock
# --target: the packages and their dist-info in one folder that the serving stage puts on PYTHONPATH,
# apart from the dependencies' layer.
RUN python -m pip install -q --require-hashes -r /tmp/build.lock \
 && python -m pip install -q --no-deps --no-build-isolation --no-compile --target /opt/charlm . \
 && python -m compileall -q /opt/charlm >/dev/null


FROM ${PYTHON_IMAGE} AS serve
# A numeric uid so that Kubernetes' runAsNonRoot can verify it; any other uid works too (`--user 12345`):
# nothing in the image is writable, HOME=/tmp and /tmp is the one writable mount (a tmpfs or emptyDir),
# where PROMETHEUS_MULTIPROC_DIR lives too.
RUN useradd --system --uid 10001 --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin charlm
COPY --from=deps /opt/venv /opt/venv
COPY models/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/opt/charlm \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHARLM_MODELS=/models \
    CHARLM_HOST=0.0.0.0 \
    CHARLM_PORT=8000 \
    CHARLM_BACKEND=onnx \
    CHARLM_DEVICE=cpu
COPY --from=code /opt/charlm /opt/charlm
# Provenance, last so that a new commit changes metadata only (`make docker` passes all four; see
# `docker inspect`): the revision also reaches charlm_build_info{version, revision} on /metrics.
ARG VERSION=unknown
ARG REVISION=unknown
ARG CREATED=unknown
ARG SOURCE=unknown
LABEL org.opencontainers.image.title="charlm" \
      org.opencontainers.image.description="Serve small character-level language models over HTTP (ONNX Runtime)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${CREATED}" \
      org.opencontainers.image.source="${SOURCE}"
ENV CHARLM_BUILD_REVISION=${REVISION}
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# LitServe stops cleanly on SIGINT; the service handles SIGTERM as well, SIGINT is the safer default.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('CHARLM_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve"]

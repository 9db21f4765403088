# charlm serving image.
#
#   docker build --target serve -t charlm .               # ONNX Runtime, no torch (the default image)
#   docker build --target torch -t charlm:torch .         # adds torch==2.13.0 for --backend torchscript
#
# Stages: builder (venv with .[serve]) -> serve (the image we ship) -> torch (serve + torch) -> final.
# The last stage is a copy of `serve`, so a plain `docker build .` gives the serving image; BuildKit then
# skips the torch stage. The legacy builder (docker without buildx) builds every stage before its target,
# which is why the Makefile and deploy/smoke.sh pass `--target serve`: that never touches torch.

ARG PYTHON_IMAGE=python:3.11-slim

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/venv
WORKDIR /src
# Dependencies first, read from pyproject.toml, so that a code change does not re-download them.
COPY pyproject.toml ./
RUN python -c "import tomllib; p = tomllib.load(open('pyproject.toml', 'rb'))['project']; \
print('\n'.join(p['dependencies'] + p['optional-dependencies']['serve']))" > /tmp/requirements.txt \
 && /opt/venv/bin/pip install -r /tmp/requirements.txt
COPY contract ./contract
COPY service ./service
COPY training ./training
# The serving image needs neither pip nor the packages' own test suites (about 40 MB together);
# the torch target brings pip back with ensurepip.
RUN /opt/venv/bin/pip install --no-deps . \
 && /opt/venv/bin/pip uninstall -y -q setuptools pip \
 && find /opt/venv -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} + \
 && /opt/venv/bin/python -m compileall -q -j 0 /opt/venv/lib >/dev/null


FROM ${PYTHON_IMAGE} AS serve
LABEL org.opencontainers.image.title="charlm" \
      org.opencontainers.image.description="Serve small character-level language models over HTTP (ONNX Runtime)"
# A numeric uid so that Kubernetes' runAsNonRoot can verify it; HOME=/tmp because the root filesystem is
# read-only in deploy/k8s and /tmp is the one writable mount (PROMETHEUS_MULTIPROC_DIR lives there too).
RUN useradd --system --uid 10001 --user-group --home-dir /tmp --no-create-home --shell /usr/sbin/nologin charlm
COPY --from=builder /opt/venv /opt/venv
COPY models/ /models/
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/tmp \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    CHARLM_MODELS=/models \
    CHARLM_HOST=0.0.0.0 \
    CHARLM_PORT=8000 \
    CHARLM_BACKEND=onnx \
    CHARLM_DEVICE=cpu
USER 10001:10001
WORKDIR /tmp
EXPOSE 8000
# LitServe stops cleanly on SIGINT; the service handles SIGTERM as well, SIGINT is the safer default.
STOPSIGNAL SIGINT
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('CHARLM_PORT', '8000'), timeout=2)"]
ENTRYPOINT ["python", "-m", "service"]
CMD ["serve"]


# TorchScript backend. PyPI's torch==2.13.0 for linux/x86_64 is the CUDA build (several GB with its
# nvidia-* wheels); where PyTorch's CPU index is reachable, pass
#   --build-arg TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
# to get the ~200 MB CPU build instead.
FROM serve AS torch
ARG TORCH_PIP_ARGS=""
USER root
RUN python -m ensurepip -q \
 && python -m pip install --no-cache-dir --disable-pip-version-check ${TORCH_PIP_ARGS} torch==2.13.0
USER 10001:10001
ENV CHARLM_BACKEND=torchscript


# Default target: the serving image.
FROM serve

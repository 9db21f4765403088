# TorchScript image: the serving image (Dockerfile) plus torch, for --backend torchscript.
#
#   docker build -t charlm:latest . && docker build -f deploy/torch.Dockerfile -t charlm:torch .
#   make docker-torch                                  # the same two builds
#
# A separate file, not a stage of ./Dockerfile: the legacy builder builds every stage above the one it is
# asked for, so a torch stage there would be built by every plain `docker build .`.
# PyPI's torch for linux/x86_64 is the CUDA build (several GB with its nvidia-* wheels). For the CPU build
# (~700 MB unpacked) add PyTorch's CPU index with
#   --build-arg TORCH_PIP_ARGS="--extra-index-url https://download.pytorch.org/whl/cpu"
# (extra, not --index-url: torch's own dependencies are pinned to PyPI versions by requirements/dev.lock).
# The lock's hashes are PyPI's, so a CPU build from that index could never match them: pip gets the lock's
# bare pins as constraints (pip takes neither hashes nor extras there; the Makefile derives them the same way).
ARG BASE_IMAGE=charlm:latest
FROM ${BASE_IMAGE}
ARG TORCH_PIP_ARGS=""
USER root
COPY requirements/dev.lock /tmp/dev.lock
# The serving image has no pip: bring it back for this one install, pinned by the CI lock, then drop it.
RUN sed -nE 's/^([A-Za-z0-9_.-]+)(\[[^]]*\])?(==[^ ;\\]+)( ;[^\\]*[^ \\])?.*/\1\3\4/p' /tmp/dev.lock > /tmp/constraints.txt \
 && python -m ensurepip >/dev/null \
 && python -m pip install -q --no-cache-dir --disable-pip-version-check -c /tmp/constraints.txt ${TORCH_PIP_ARGS} torch==2.13.0 \
 && python -m pip uninstall -y -q pip setuptools \
 && rm /tmp/dev.lock /tmp/constraints.txt
USER 10001:10001
ENV CHARLM_BACKEND=torchscript

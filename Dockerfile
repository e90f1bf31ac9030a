# syntax=docker/dockerfile:1
#
# sida images (docs/deploy.md). Two targets with one layout:
#
#   docker build --target cuda -t sida:cuda .   GPU hosts: NVIDIA's PyTorch image (CUDA, cuDNN, TensorRT, Torch-TensorRT)
#   docker build --target cpu  -t sida:cpu  .   machines without a GPU: python:3.11-slim with a CPU build of torch
#
# Both hold the project (editable install, with its extras) in /opt/venv + /opt/sida and run as the non-root user
# sida (uid 10001). deploy/entrypoint.sh starts `sida serve`, configured by SIDA_* variables; the API listens on
# :8000 and HEALTHCHECK asks /readyz. `cuda` is the last stage, so a plain `docker build .` builds it.

ARG CPU_BASE=python:3.11-slim-bookworm
# Keep this and the tritonserver image in deploy/compose.yaml on one NGC release (YY.MM): a TensorRT engine
# loads only in the TensorRT version that built it (25.01: TensorRT 10.8, CUDA 12.8, Python 3.12).
ARG CUDA_BASE=nvcr.io/nvidia/pytorch:25.01-py3
ARG SIDA_EXTRAS=text,t2i,export,serve,ui


# ------------------------------------------------------------------------------------------------ cpu
FROM ${CPU_BASE} AS cpu-build
ARG SIDA_EXTRAS
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/sida
# Dependencies first, in a layer of their own: torch from PyTorch's CPU index (PyPI's Linux wheel brings CUDA),
# then the rest from PyPI under the pins that development and CI use (requirements-cpu.txt).
COPY pyproject.toml requirements-cpu.txt ./
COPY deploy/requirements.py deploy/
RUN --mount=type=cache,target=/root/.cache/pip \
    grep -E '^torch([=<>~! ]|$)' requirements-cpu.txt > /tmp/torch.txt \
    && pip install --index-url "${TORCH_INDEX_URL}" -r /tmp/torch.txt \
    && python deploy/requirements.py "${SIDA_EXTRAS}" > /tmp/requirements.txt \
    && pip install -c requirements-cpu.txt -r /tmp/requirements.txt
COPY README.md ./
COPY sida/ sida/
COPY models/ models/
COPY train/ train/
COPY export/ export/
COPY serve/ serve/
COPY ui/ ui/
COPY bench/ bench/
COPY deploy/ deploy/
# Editable on purpose: `sida serve` finds the zoo at models/zoo beside the code, and Triton python-backend
# repositories made here point their sida_root at /opt/sida.
RUN --mount=type=cache,target=/root/.cache/pip \
    pip install --no-deps -e . \
    && python -m compileall -q sida models train export serve ui bench deploy \
    && sida --version


FROM ${CPU_BASE} AS cpu
RUN groupadd --gid 10001 sida \
    && useradd --no-log-init --uid 10001 --gid sida --create-home --home-dir /home/sida --shell /usr/sbin/nologin sida \
    && install -d -o sida -g sida /bundles /model-repository
COPY --from=cpu-build /opt/venv /opt/venv
COPY --from=cpu-build /opt/sida /opt/sida
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/sida \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    SIDA_HOST=0.0.0.0 \
    SIDA_PORT=8000
# No SIDA_ALLOW_UNAUTHENTICATED here, on purpose: on 0.0.0.0 `sida serve` refuses to start without API keys
# (SIDA_API_KEYS_FILE) unless the operator opts in with -e SIDA_ALLOW_UNAUTHENTICATED=1 (docs/deploy.md).
# Numeric, so that Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/sida
# The zoo (models/zoo, copied above) is what `sida serve` serves by default; resolving the defaults now fails the
# build early if a bundle is broken (and would bake the untrained demo bundle were the zoo ever missing).
RUN python -c 'from serve.cli import default_bundles; from models.bundle import validate_bundle; [validate_bundle(b) for b in default_bundles(print)]'
EXPOSE 8000
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "/opt/sida/deploy/healthcheck.py"]
ENTRYPOINT ["/opt/sida/deploy/entrypoint.sh"]
CMD []


# ----------------------------------------------------------------------------------------------- cuda
FROM ${CUDA_BASE} AS cuda-build
ARG SIDA_EXTRAS
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
# A venv over the image's Python that sees the image's torch, TensorRT and Torch-TensorRT (system site-packages).
# It is made without pip (Ubuntu's Python may lack ensurepip); the image's own pip installs into it.
RUN python3 -m venv --without-pip --system-site-packages /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /opt/sida
COPY pyproject.toml ./
COPY deploy/requirements.py deploy/
# The base image's torch stays, pinned to its exact version so that pip can never swap it for a PyPI wheel.
# NGC images from 25.03 on pin all their packages in /etc/pip/constraint.txt: numpy is released from that pin
# because PyTriton needs numpy<2 (pyproject.toml).
RUN --mount=type=cache,target=/root/.cache/pip \
    { grep -v -i -E '^numpy([=<>~! ]|$)' /etc/pip/constraint.txt 2>/dev/null || true; \
      python -c 'from importlib.metadata import version; print("torch==" + version("torch"))'; } > /tmp/constraints.txt \
    && python deploy/requirements.py "${SIDA_EXTRAS}" --exclude torch > /tmp/requirements.txt \
    && PIP_CONSTRAINT=/tmp/constraints.txt python -m pip install -r /tmp/requirements.txt \
    && python -c 'import importlib.util as u; assert u.find_spec("tensorrt"), "the base image has no TensorRT"'
COPY README.md ./
COPY sida/ sida/
COPY models/ models/
COPY train/ train/
COPY export/ export/
COPY serve/ serve/
COPY ui/ ui/
COPY bench/ bench/
COPY deploy/ deploy/
# PIP_CONSTRAINT emptied: the image's pins must not reach the isolated build of the project itself (setuptools>=68).
RUN --mount=type=cache,target=/root/.cache/pip \
    PIP_CONSTRAINT='' python -m pip install --no-deps -e . \
    && python -m compileall -q sida models train export serve ui bench deploy \
    && sida --version


FROM ${CUDA_BASE} AS cuda
RUN groupadd --gid 10001 sida \
    && useradd --no-log-init --uid 10001 --gid sida --create-home --home-dir /home/sida --shell /usr/sbin/nologin sida \
    && install -d -o sida -g sida /bundles /model-repository
COPY --from=cuda-build /opt/venv /opt/venv
COPY --from=cuda-build /opt/sida /opt/sida
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/sida \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    SIDA_HOST=0.0.0.0 \
    SIDA_PORT=8000
# No SIDA_ALLOW_UNAUTHENTICATED here, on purpose: on 0.0.0.0 `sida serve` refuses to start without API keys
# (SIDA_API_KEYS_FILE) unless the operator opts in with -e SIDA_ALLOW_UNAUTHENTICATED=1 (docs/deploy.md).
USER 10001:10001
WORKDIR /home/sida
RUN python -c 'from serve.cli import default_bundles; from models.bundle import validate_bundle; [validate_bundle(b) for b in default_bundles(print)]'
EXPOSE 8000
# Longer start period than cpu: on a GPU, `auto` may compile (torch.compile or a TensorRT engine) while warming up.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
    CMD ["python", "/opt/sida/deploy/healthcheck.py"]
# Replaces the base image's /opt/nvidia/nvidia_entrypoint.sh (a banner and driver checks).
ENTRYPOINT ["/opt/sida/deploy/entrypoint.sh"]
CMD []

# The nextword serving image: service/ and the `serve` dependencies only (no torch, no training code).
#
# Python packages install offline from a wheel directory in the build context, made on any machine
# with the image's Python version:
#   docker/wheels.sh .whl                # CPU: onnxruntime, for the image's Python (3.11 here)
#   docker build -t nextword .           # default target `baked`: bundles/default inside the image
#   docker build --target runtime -t nextword:mount .   # no bundle: mount one read-only at /bundle
#
# Run (the bundle baked in, or mounted with `-v /path/to/bundle:/bundle:ro` on the runtime target):
#   docker run --read-only --tmpfs /tmp -p 8000:8000 nextword
# Every writable path (numba's JIT cache, Python's caches, HOME) is under /tmp, so a read-only root
# filesystem with a tmpfs on /tmp is enough.
#
# Build arguments:
#   BASE_IMAGE   an image with python3 and its venv module (official python:3.11-slim by default;
#                this repository's CI passes a debootstrapped Debian bookworm imported locally).
#   WHEELS       the wheel directory in the context, with a requirements.txt listing what to install.
#   BUNDLE       (target `baked`) the bundle directory in the context to copy to /bundle.
#
# CUDA variant (the same stages, other arguments; documented, not built by CI):
#   docker/wheels.sh --cuda .whl-cuda    # onnxruntime-gpu instead of onnxruntime, for Python 3.12
#   docker build --build-arg BASE_IMAGE=nvidia/cuda:12.6.3-cudnn-runtime-ubuntu24.04 \
#       --build-arg WHEELS=.whl-cuda -t nextword:cuda .
#   docker run --gpus all -e NEXTWORD_PROVIDERS=cuda,cpu --read-only --tmpfs /tmp nextword:cuda
# The CUDA base has no Python, so the stages install python3 and python3-venv with apt when the
# base lacks them (this needs the network at build time, as any build from the official images).
#
# No `# syntax=` line, heredocs or RUN --mount: this file also builds with the legacy builder.

ARG BASE_IMAGE=python:3.11-slim

# -- build: a virtual environment installed from wheels only ---------------------------------------
FROM ${BASE_IMAGE} AS build
RUN command -v python3 >/dev/null && python3 -c "import venv, ensurepip" \
    || (apt-get update && apt-get install -y --no-install-recommends python3 python3-venv \
        && rm -rf /var/lib/apt/lists/*)
ARG WHEELS=.whl
COPY ${WHEELS}/ /wheels/
RUN python3 -m venv /opt/nextword \
    && /opt/nextword/bin/python -m pip install --no-index --no-cache-dir --find-links /wheels \
        -r /wheels/requirements.txt \
    && /opt/nextword/bin/python -m pip uninstall --yes --quiet pip setuptools
COPY service/ /app/service/
# Compiled now, because the running container may not write next to its sources.
RUN /opt/nextword/bin/python -m compileall -q /app/service

# -- runtime: the serving image; the bundle is mounted at /bundle ----------------------------------
FROM ${BASE_IMAGE} AS runtime
RUN command -v python3 >/dev/null \
    || (apt-get update && apt-get install -y --no-install-recommends python3 \
        && rm -rf /var/lib/apt/lists/*)
COPY --from=build /opt/nextword /opt/nextword
COPY --from=build /app /app
# The caches live under /tmp so that `--read-only --tmpfs /tmp` works; the port is the listen port
# inside the container (publish it with -p, or use --network host).
ENV PATH=/opt/nextword/bin:$PATH \
    PYTHONPATH=/app \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    NUMBA_CACHE_DIR=/tmp/numba-cache \
    MPLCONFIGDIR=/tmp/mpl \
    NEXTWORD_BUNDLE=/bundle \
    NEXTWORD_HOST=0.0.0.0 \
    NEXTWORD_PORT=8000
WORKDIR /app
# Numeric, so that Kubernetes' runAsNonRoot can verify it without an /etc/passwd entry.
USER 10001:10001
EXPOSE 8000
# /healthz says the process serves; /readyz (bundle loaded and warm) is for load balancers.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('NEXTWORD_PORT', '8000'), timeout=2)"
# exec form: the server is PID 1 and receives SIGTERM itself, which starts its graceful drain.
ENTRYPOINT ["python", "-m", "service", "serve"]

# -- baked (default): the runtime image with a bundle copied in ------------------------------------
FROM runtime AS baked
ARG BUNDLE=bundles/default
# Owned by the serving user: bundles are written with owner-only permissions (mkdtemp), and the
# legacy builder has no COPY --chmod. A mounted bundle must likewise be readable by uid 10001.
COPY --chown=10001:10001 ${BUNDLE}/ /bundle/

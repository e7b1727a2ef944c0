# Heron on CPU: a builder stage compiles the kernels through the normal install, a slim stage
# runs them as a non-root user with the model store on a volume.
#
#   docker build -t heron .
#   docker run -d -p 127.0.0.1:11434:11434 -e HERON_API_KEY=... -v heron-models:/data/models heron
#
# torch==2.13.0 from PyPI's default index is the CUDA build (several GB). To install the CPU
# wheel instead, pass its index:
#   docker build --build-arg PIP_EXTRA_INDEX_URL=<the CPU wheel index> -t heron .
# The kernels are compiled once per ISA level (scalar, AVX2, AVX-512 VNNI) with explicit flags,
# never for the build host's CPU, so an image built on one x86-64 machine runs on any other.

# ---- builder: a venv with Heron installed and its kernels compiled ---------------------------
FROM python:3.11-bookworm AS builder

# A build argument is in the environment of this stage's RUN commands, where pip reads it.
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1

RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH

WORKDIR /src
# The build requirements first (setuptools, torch, ninja: pyproject's [build-system]), in their
# own layer, so that a source change does not download torch again. The pins are the ones in
# pyproject.toml.
COPY pyproject.toml ./
RUN python -c 'import tomllib; print("\n".join(tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]))' > /tmp/build-requires.txt \
    && pip install -r /tmp/build-requires.txt

COPY setup.py README.md ./
COPY heron ./heron
# Compiles the CPU kernels (a few minutes on two cores) against the torch installed above; the
# check imports the installed package (-P: not the sources in the working directory).
RUN pip install --no-build-isolation . \
    && python -P -c 'from heron.kernels import installed_isas; print("Heron kernels built:", " ".join(installed_isas()) or "none")'

# ---- runtime ---------------------------------------------------------------------------------
FROM python:3.11-slim-bookworm AS runtime

# The builder's venv links to /usr/local/bin/python3.11: both images put Python there.
COPY --from=builder /opt/venv /opt/venv

RUN useradd --create-home --no-log-init --uid 10001 --user-group heron \
    && mkdir -p /data/models \
    && chown -R heron:heron /data

ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HERON_MODELS=/data/models \
    HERON_HOST=0.0.0.0:11434

USER 10001:10001
WORKDIR /home/heron
VOLUME ["/data/models"]
EXPOSE 11434

# /health needs no API key. slim has no curl: Python's urllib asks.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ.get('HERON_HOST', '').rsplit(':', 1)[-1]; urllib.request.urlopen('http://127.0.0.1:%s/health' % (port if port.isdigit() else '11434'), timeout=4)"]

# Listening on 0.0.0.0 is a public bind: Heron serves it only with an API key (heron serve
# refuses it otherwise). Say so at once, in the container's terms, rather than start at all.
ENTRYPOINT ["/bin/sh", "-c", "if [ -z \"${HERON_API_KEY:-}\" ]; then echo \"heron container: HERON_API_KEY is not set. The container listens on ${HERON_HOST}, and Heron serves a non-loopback address only with an API key. Pass one, e.g. docker run -e HERON_API_KEY=\\$(openssl rand -hex 32) ..., or set HERON_API_KEY in the .env file beside compose.yaml. Clients send it as 'Authorization: Bearer <key>'.\" >&2; exit 64; fi; exec heron \"$@\"", "heron"]
CMD ["serve"]

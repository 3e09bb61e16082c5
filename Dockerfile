# Portico's container image: `docker build -t portico:0.1.0 .` (see deploy/README.md).
#
# Two stages: the first builds Portico's wheel and a wheel of every dependency; the second installs them
# into a clean python:3.11-slim with no compiler, no source tree and no pip cache, and runs as a non-root
# user. The demo config is copied to /etc/portico/portico.yaml so that `docker run` works out of the box;
# Kubernetes mounts its ConfigMap over /etc/portico (deploy/kubernetes/).

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# Only what the wheel is made of: pyproject names README.md as the long description.
COPY pyproject.toml README.md ./
COPY proxy ./proxy
COPY plugins ./plugins
RUN pip wheel --wheel-dir /wheels .

FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
# A fixed numeric id, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --system --gid 10001 portico \
 && useradd --system --uid 10001 --gid portico --home-dir /var/lib/portico --shell /usr/sbin/nologin portico \
 && install -d -o portico -g portico -m 0750 /var/lib/portico
# The wheels are bind-mounted from the build stage, so they never become a layer of this image.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-index --find-links=/wheels mcp-portico
COPY proxy/demo/portico.yaml /etc/portico/portico.yaml
COPY policies /usr/share/portico/policies

# The working directory is writable by the gateway: relative paths in a config (the auth plugin's default
# token store, .portico/tokens.sqlite) land here. Kubernetes mounts an emptyDir here (read-only root).
WORKDIR /var/lib/portico
USER 10001:10001
EXPOSE 8765
# slim has no curl; the interpreter that runs the gateway asks /healthz instead (it assumes port 8765).
HEALTHCHECK --interval=15s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8765/healthz', timeout=4)"]
ENTRYPOINT ["portico"]
CMD ["serve", "--config", "/etc/portico/portico.yaml", "--host", "0.0.0.0"]

# The fleet's one image: every compose service (router, tier workers, Flower, mock provider) runs it
# with a different `fleet ...` command. Build: docker build -t fleet .   Run: docker run --rm fleet
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /src
COPY pyproject.toml README.md ./
COPY fleet ./fleet
COPY config ./config
COPY queues ./queues
# The wheel carries config/ and queues/ as the package's defaults (fleet/_defaults), so /src is not
# needed at run time; mount your own and set FLEET_CONFIG_DIR to change them.
RUN pip install --no-cache-dir . && rm -rf /src

# Celery refuses nothing as root but warns for good reason: run as an unprivileged user.
RUN useradd --create-home --uid 10001 --shell /usr/sbin/nologin fleet
USER fleet
WORKDIR /home/fleet
ENV FLEET_STATE_DIR=/home/fleet/.fleet

CMD ["fleet", "--help"]

# Spillway under uWSGI: `uwsgi --ini uwsgi.ini`, which serves HTTP itself (http-socket;
# see the head of uwsgi.ini for why not uWSGI's http router).
#   docker build -t spillway .
#   docker run -p 8000:8000 -v spillway-data:/data -e SPILLWAY_TOKENS=... spillway
# tests/test_docker.py lints this file and runs its CMD with its ENV outside Docker.

FROM python:3.11.14-slim-bookworm

# a fixed uid, so a bind-mounted /data can be chowned to it on the host
RUN groupadd --system --gid 10001 spillway \
    && useradd --system --uid 10001 --gid spillway --no-create-home \
        --home-dir /nonexistent --shell /usr/sbin/nologin spillway \
    && mkdir /data \
    && chown spillway:spillway /data

# every requirement is a wheel (uWSGI comes as pyuwsgi): no compiler in the image
WORKDIR /app
COPY requirements.txt ./
RUN pip install --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
        -r requirements.txt

# the files uWSGI needs, each at the same path below WORKDIR as in the repository
COPY wsgi.py uwsgi.ini ./
COPY app/ app/
# the user cannot write here, so compile now rather than on every start
RUN python -m compileall -q app wsgi.py

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    SPILLWAY_STORAGE_DIR=/data \
    SPILLWAY_BIND=0.0.0.0:8000

VOLUME ["/data"]
USER 10001:10001
EXPOSE 8000

# no curl in the slim image; the port is the one SPILLWAY_BIND says
HEALTHCHECK --interval=30s --timeout=5s --start-period=10s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; port = os.environ['SPILLWAY_BIND'].rpartition(':')[2]; urllib.request.urlopen(f'http://127.0.0.1:{port}/health', timeout=4)"]

# docker stop sends SIGTERM: uwsgi.ini lets uploads in flight finish (docker stop -t 300)
CMD ["uwsgi", "--ini", "uwsgi.ini"]

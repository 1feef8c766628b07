# RKE2 Portal: one image for every role (web, worker, beat, migrate); docker-compose.yml picks the command.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# openssh-client: ssh, ssh-agent and ssh-add, which ansible-runner uses to reach the hosts.
# tini: PID 1 that reaps the processes playbook runs leave behind (SSH control masters, agents).
RUN apt-get update \
    && apt-get install -y --no-install-recommends openssh-client tini \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 1000 rke2portal \
    && useradd --system --uid 1000 --gid rke2portal --home-dir /app --shell /usr/sbin/nologin rke2portal

WORKDIR /app

# Runtime packages only (the test and tooling packages are in requirements-dev.txt).
COPY requirements.txt ./
RUN python -m venv "$VIRTUAL_ENV" \
    && pip install -r requirements.txt

COPY . .

# Static files are part of the image (whitenoise serves them from STATIC_ROOT with hashed names).
ENV DJANGO_STATIC_ROOT=/app/staticfiles \
    RKE2PORTAL_DATA_DIR=/app/data \
    ANSIBLE_DIR=/app/ansible \
    DJANGO_READ_DOT_ENV_FILE=false
RUN DJANGO_SECRET_KEY=collectstatic-only RKE2PORTAL_DATA_DIR=/tmp/build-data \
        python manage.py collectstatic --noinput \
    && rm -rf /tmp/build-data \
    && install -d -o rke2portal -g rke2portal -m 0700 /app/data

USER rke2portal
VOLUME ["/app/data"]
EXPOSE 8000

ENTRYPOINT ["/usr/bin/tini", "--"]
CMD ["gunicorn", "rke2portal.wsgi:application", "--bind", "0.0.0.0:8000", "--access-logfile", "-"]

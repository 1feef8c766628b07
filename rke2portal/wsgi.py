"""WSGI entry point (gunicorn rke2portal.wsgi)."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "rke2portal.settings")

application = get_wsgi_application()

"""WSGI entry point: ``gunicorn aitbc_site.wsgi`` serves the REST API."""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "aitbc_site.settings")
application = get_wsgi_application()

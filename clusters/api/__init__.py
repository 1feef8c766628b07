"""The REST API for integrations (Django REST Framework), mounted under /api/."""

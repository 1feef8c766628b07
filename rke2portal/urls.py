"""Project URLs: / (to the admin), the liveness and readiness probes, the admin, the API under /api/ with its
OpenAPI schema and Swagger UI."""

from django.contrib import admin
from django.urls import include, path, reverse_lazy
from django.views.generic import RedirectView
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.permissions import AllowAny

from .health import healthz, readyz

urlpatterns = [
    path("", RedirectView.as_view(url=reverse_lazy("admin:index"), permanent=False), name="home"),
    path("healthz", healthz, name="healthz"),
    path("readyz", readyz, name="readyz"),
    path("admin/", admin.site.urls),
    path("api/", include("clusters.api.urls")),
    path("api/schema/", SpectacularAPIView.as_view(permission_classes=[AllowAny]), name="api-schema"),
    path(
        "api/docs/",
        SpectacularSwaggerView.as_view(url_name="api-schema", permission_classes=[AllowAny]),
        name="api-docs",
    ),
]

handler404 = "rke2portal.exceptions.api_not_found"
handler500 = "rke2portal.exceptions.api_server_error"

"""Root URLs: admin, the JSON API v1 with its OpenAPI schema, pages, liveness and health."""

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView

from leadops import dashboard_views, views

urlpatterns = [
    path("", views.home, name="home"),
    path("healthz/", views.healthz, name="healthz"),
    path("health/", views.health, name="health"),
    path("dashboard/", dashboard_views.dashboard, name="dashboard"),
    path("", include("handoff.urls")),
    path("", include("nurturing.urls")),
    path("i18n/", include("django.conf.urls.i18n")),
    path("admin/", admin.site.urls),
    path("api/v1/", include("leadops.api")),
    path("api/v1/", include("handoff.api")),
    # No namespace: the activation job's poll URL is reversed by its route name.
    path("api/v1/scoring/", include("scoring.api")),
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    # The split view serves Swagger UI's start-up script as a file: the CSP has no inline script.
    path("api/docs/", SpectacularSwaggerSplitView.as_view(url_name="schema"), name="api-docs"),
]

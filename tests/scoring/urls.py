"""URLs for the scoring API tests, as the project mounts them (/api/v1/scoring/)."""

from django.urls import include, path

urlpatterns = [path("api/v1/scoring/", include("scoring.api"))]

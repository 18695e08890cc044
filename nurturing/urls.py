"""Public nurturing endpoints: mail tracking and unsubscribe, website snippet and forms."""

from django.urls import include, path

urlpatterns = [
    path("t/", include("nurturing.tracking_urls")),
    path("capture/", include("nurturing.capture_urls")),
]

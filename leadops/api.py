"""API v1 of the lead core (leads, events). Filled in by the Foundation work."""

urlpatterns: list = []

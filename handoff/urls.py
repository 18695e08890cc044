"""URLs of the pages IS and sales work in (included at the site root)."""

from django.urls import path

from handoff import views

app_name = "handoff"

urlpatterns = [
    path("queue/", views.queue, name="queue"),
    path("inbox/", views.inbox, name="inbox"),
    path("leads/<int:pk>/", views.lead_detail, name="lead"),
    path("leads/<int:pk>/<slug:name>/", views.lead_action, name="lead_action"),
    path("handoffs/<int:pk>/<slug:name>/", views.handoff_action, name="handoff_action"),
    path("notifications/", views.notifications, name="notifications"),
    path("notifications/bell/", views.notification_bell, name="notification_bell"),
    path("notifications/read/", views.mark_read, name="mark_read"),
]

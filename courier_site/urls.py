"""URL routes: the console (Django admin) and the health endpoints."""

from __future__ import annotations

from django.contrib import admin
from django.urls import path
from django.views.generic import RedirectView

from console.views import dashboard_view
from courier_site import health
from keystore.views import shared_public_key

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="admin:index", permanent=False)),
    # Listed before the admin's own URLs so the console's index (admin:index) is the dashboard.
    path("admin/", admin.site.admin_view(dashboard_view), name="dashboard"),
    path("admin/", admin.site.urls),
    path("health/", health.health, name="health"),
    path("health/partitions", health.health_partitions, name="health-partitions"),
    path("share/<str:token>/", shared_public_key, name="shared-public-key"),
]

"""The console's index page: the dashboard of console.dashboard, inside the admin's frame."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from console import dashboard


def dashboard_view(request: HttpRequest) -> TemplateResponse:
    """Every figure of console.dashboard, each linking to the list behind it."""
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "subtitle": None,
        "index": True,
        "dashboard": dashboard.gather(),
    }
    request.current_app = admin.site.name
    return TemplateResponse(request, "admin/dashboard.html", context)

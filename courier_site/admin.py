"""Console pages of the platform tables (applied SQL scripts, process heartbeats) and the dashboard index."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest
from django.template.response import TemplateResponse

from courier_site import dashboard
from courier_site.admin_base import ReadOnlyAdmin
from courier_site.models import ProcessHeartbeat, SchemaVersion
from system.signin import ThrottledAuthenticationForm

# The console's only way in: this login form refuses locked usernames and addresses
# (failures are counted by the user_login_failed receiver in system.signin).
admin.site.login_form = ThrottledAuthenticationForm


def dashboard_view(request: HttpRequest) -> TemplateResponse:
    """The console's index page: courier_site.dashboard's figures, each linking to the list behind it."""
    context = {
        **admin.site.each_context(request),
        "title": "Dashboard",
        "subtitle": None,
        "index": True,
        "dashboard": dashboard.gather(),
    }
    request.current_app = admin.site.name
    return TemplateResponse(request, "admin/dashboard.html", context)


@admin.register(SchemaVersion)
class SchemaVersionAdmin(ReadOnlyAdmin):
    list_display = ("script_name", "applied_at", "execution_ms", "checksum")
    search_fields = ("script_name",)
    ordering = ("-script_name",)


@admin.register(ProcessHeartbeat)
class ProcessHeartbeatAdmin(ReadOnlyAdmin):
    list_display = (
        "process_name",
        "kind",
        "hostname",
        "pid",
        "started_at",
        "last_seen_at",
        "stopped_at",
        "schema_version",
    )
    list_filter = ("kind",)
    search_fields = ("process_name", "hostname")

"""Console page for system settings: Admins edit known keys with per-key validation; everyone else reads."""

from __future__ import annotations

import contextlib
from typing import Any

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.urls import reverse
from unfold.admin import ModelAdmin
from unfold.widgets import UnfoldAdminSelectWidget, UnfoldAdminTextInputWidget

from courier_site.admin_base import AuditHistoryMixin, RefusalAuditMixin
from system import registry
from system.models import SystemSetting

UNKNOWN_KEY_NOTE = (
    f"[{registry.UnknownSetting.code}] Courier does not know this setting, so it cannot check a new "
    "value for it: it is shown read-only. Change it in the database if you must."
)


def value_field(spec: registry.SettingSpec | None) -> forms.CharField:
    """The value input for one key: a drop-down for fixed values, text otherwise; validated in clean()."""
    if spec is None:
        return forms.CharField(
            widget=UnfoldAdminTextInputWidget,
            help_text="Choose the setting first; its value is checked against the allowed values listed above.",
        )
    options = spec.options()
    # A select widget on a CharField: the choice is still checked by the registry, which names
    # the key and the allowed values with [E1006], instead of Django's generic "invalid choice".
    widget = UnfoldAdminSelectWidget(choices=[(option, option) for option in options]) if options else None
    return forms.CharField(
        widget=widget or UnfoldAdminTextInputWidget,
        help_text=f"{spec.help} Allowed: {spec.describe()}; default {spec.format(spec.default)}.",
    )


class SystemSettingForm(forms.ModelForm):
    class Meta:
        model = SystemSetting
        fields = ("key", "value")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        spec = None if self.instance._state.adding else self.instance.spec
        if "key" in self.fields:
            present = set(SystemSetting.objects.values_list("key", flat=True))
            self.fields["key"] = forms.ChoiceField(
                choices=[("", "---------")] + [(key, key) for key in registry.SETTINGS if key not in present],
                help_text="Only settings Courier knows can be added; every other one is already listed.",
                widget=UnfoldAdminSelectWidget,
            )
        if "value" in self.fields:
            self.fields["value"] = value_field(spec)
            if spec is not None:
                # Show the stored value in its normal form, so a drop-down selects it; a value
                # that no longer passes (set in psql) is shown as it is, to be corrected.
                with contextlib.suppress(registry.SettingValueInvalid):
                    self.initial["value"] = spec.normalize(self.instance.value)

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        key = cleaned.get("key") or self.instance.key
        if not key or "value" not in cleaned:
            return cleaned
        try:
            cleaned["value"] = registry.spec_for(key).normalize(cleaned["value"])
        except registry.UnknownSetting as error:
            self.add_error("key" if "key" in self.fields else None, ValidationError(str(error), code=error.code))
        except registry.SettingValueInvalid as error:
            self.add_error("value", ValidationError(str(error), code=error.code))
        return cleaned


@admin.register(SystemSetting)
class SystemSettingAdmin(AuditHistoryMixin, RefusalAuditMixin, ModelAdmin):
    audit_entity_type = "system_setting"
    form = SystemSettingForm
    list_display = ("key", "shown_value", "allowed_values", "updated_at", "updated_by")
    search_fields = ("key", "description")

    @admin.display(description="value")
    def shown_value(self, obj: SystemSetting) -> str:
        return obj.shown_value

    @admin.display(description="allowed values")
    def allowed_values(self, obj: SystemSetting) -> str:
        spec = obj.spec
        return spec.describe() if spec is not None else "unknown setting, read-only"

    @admin.display(description="what it does")
    def explanation(self, obj: SystemSetting) -> str:
        spec = obj.spec
        return spec.help if spec is not None else UNKNOWN_KEY_NOTE

    def get_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ("key", "value")
        return ("key", "value", "explanation", "allowed_values", "updated_at", "updated_by")

    def get_readonly_fields(self, request: HttpRequest, obj: Any = None) -> tuple[str, ...]:
        if obj is None:
            return ()
        return ("key", "explanation", "allowed_values", "updated_at", "updated_by")

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # A key Courier does not know cannot be validated, so it is not edited here.
        return super().has_change_permission(request, obj) and (obj is None or obj.spec is not None)

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        # Settings are changed, never removed: a missing row would silently fall back to a default.
        return False

    def add_view(self, request: HttpRequest, form_url: str = "", extra_context: Any = None) -> HttpResponse:
        present = set(SystemSetting.objects.values_list("key", flat=True))
        if self.has_add_permission(request) and present >= set(registry.SETTINGS):
            messages.info(request, "Every setting Courier knows is already listed: change it instead.")
            return HttpResponseRedirect(reverse("admin:system_systemsetting_changelist"))
        return super().add_view(request, form_url, extra_context)

    def change_view(
        self, request: HttpRequest, object_id: str, form_url: str = "", extra_context: Any = None
    ) -> HttpResponse:
        setting = SystemSetting.objects.filter(pk=object_id).first()
        if request.method == "GET" and setting is not None and setting.spec is None:
            messages.warning(request, UNKNOWN_KEY_NOTE)
        return super().change_view(request, object_id, form_url, extra_context)

    def save_model(self, request: HttpRequest, obj: SystemSetting, form: Any, change: bool) -> None:
        # The manager validates again, locks the row, and audits the old and the new value.
        saved = SystemSetting.objects.put(obj.key, obj.value, by=request.user)
        obj.value, obj.updated_by = saved.value, saved.updated_by

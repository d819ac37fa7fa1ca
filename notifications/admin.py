"""Console pages for notification channels, rules and the delivery log (Admins change, others read)."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils import timezone
from django.utils.html import format_html
from unfold.admin import ModelAdmin, TabularInline

from audit.models import AuditLogEntry
from courier_site.admin_base import AuditHistoryMixin, CappedCountPaginator, RefusalAuditMixin
from courier_site.badges import badge
from notifications.delivery import send_test
from notifications.forms import ChannelForm, RuleForm
from notifications.models import Attempt, Channel, Delivery, EventKind, Rule

DELIVERY_TONES = {"sent": "good", "failed": "bad", "sending": "busy", "pending": "wait"}


def _audit_change(request: HttpRequest, entity_type: str, obj: Any, change: bool, details: dict[str, Any]) -> None:
    AuditLogEntry.objects.record(
        entity_type=entity_type,
        entity_id=obj.pk,
        operation="changed" if change else "created",
        performed_by=request.user,
        details={"name": obj.name, **details},
    )


@admin.register(Channel)
class ChannelAdmin(AuditHistoryMixin, RefusalAuditMixin, ModelAdmin):
    audit_entity_type = "notification_channel"
    form = ChannelForm
    list_display = ("name", "kind", "enabled_badge", "target", "secret_state", "last_delivery", "test_link")
    list_filter = ("kind", "enabled")
    search_fields = ("name",)
    ordering = ("name",)
    actions = ("send_test_selected",)
    fieldsets = (
        (None, {"fields": ("name", "kind", "enabled", "description")}),
        (
            "Email (SMTP)",
            {
                "fields": (
                    "smtp_host",
                    "smtp_port",
                    "smtp_security",
                    "smtp_username",
                    "smtp_password",
                    "clear_password",
                    "from_address",
                    "recipients",
                )
            },
        ),
        ("Webhook", {"fields": ("url", "new_secret")}),
        ("Both", {"fields": ("timeout_seconds",)}),
    )

    @admin.display(description="enabled")
    def enabled_badge(self, channel: Channel) -> str:
        return badge("enabled", "good") if channel.enabled else badge("disabled", "idle")

    @admin.display(description="secret")
    def secret_state(self, channel: Channel) -> str:
        label = "signing secret" if channel.kind == Channel.Kind.WEBHOOK else "password"
        return f"{label} set" if channel.has_secret else f"no {label}"

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        # The latest delivery of each channel in the list's own query (ix_notification_deliveries_channel).
        latest = Delivery.objects.filter(channel=OuterRef("pk")).order_by("-created_at")
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_state=Subquery(latest.values("state")[:1]),
                last_at=Subquery(latest.values("created_at")[:1]),
                last_error=Subquery(latest.values("last_error")[:1]),
            )
        )

    @admin.display(description="last delivery")
    def last_delivery(self, channel: Channel) -> str:
        if not getattr(channel, "last_state", None):
            return "—"
        return badge(
            f"{channel.last_state} {timezone.localtime(channel.last_at):%Y-%m-%d %H:%M}",
            DELIVERY_TONES.get(channel.last_state, "idle"),
            channel.last_error or "",
        )

    @admin.display(description="test")
    def test_link(self, channel: Channel) -> str:
        return format_html('<a href="{}">send test</a>', reverse("admin:notifications_channel_test", args=[channel.pk]))

    def get_urls(self) -> list[Any]:
        own = [
            path(
                "<uuid:channel_id>/test/",
                self.admin_site.admin_view(self.test_view),
                name="notifications_channel_test",
            )
        ]
        return own + super().get_urls()

    def has_test_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.test_channel")

    def test_view(self, request: HttpRequest, channel_id: Any) -> HttpResponse:
        channel = get_object_or_404(Channel, pk=channel_id)
        if not self.has_test_permission(request):
            AuditLogEntry.objects.record(
                entity_type="notification_channel",
                entity_id=channel.pk,
                operation="test_refused",
                performed_by=request.user,
                details={"reason": "permission"},
            )
            raise PermissionDenied
        if request.method == "POST":
            self._send_test(request, channel)
            return HttpResponseRedirect(reverse("admin:notifications_channel_change", args=[channel.pk]))
        context = {
            **self.admin_site.each_context(request),
            "title": f"Send a test notification over '{channel.name}'",
            "channel": channel,
            "opts": self.model._meta,
        }
        return TemplateResponse(request, "admin/notifications/channel_test.html", context)

    def _send_test(self, request: HttpRequest, channel: Channel) -> None:
        delivery, result = send_test(channel, by=request.user)
        where = channel.target
        if delivery.state == Delivery.State.SENT:
            code = f" ({result.response_code})" if result.response_code else ""
            messages.success(request, f"Test notification sent to {where}{code} in {result.duration_ms} ms.")
        else:
            messages.error(request, f"Test notification to {where} failed: {result.error}")

    @admin.action(description="Send a test notification", permissions=["test"])
    def send_test_selected(self, request: HttpRequest, queryset: QuerySet) -> None:
        for channel in queryset:
            self._send_test(request, channel)

    def save_model(self, request: HttpRequest, obj: Channel, form: ChannelForm, change: bool) -> None:
        with transaction.atomic():
            if not change:
                obj.created_by = request.user.get_username()
            super().save_model(request, obj, form, change)
            details: dict[str, Any] = {"kind": obj.kind, "enabled": obj.enabled, "target": obj.target}
            if form.generated_secret:
                details["signing_secret"] = "generated"
            elif form.cleaned_data.get("smtp_password"):
                details["password"] = "replaced"
            elif form.cleaned_data.get("clear_password"):
                details["password"] = "removed"
            _audit_change(request, "notification_channel", obj, change, details)

    def _secret_page(self, request: HttpRequest, obj: Channel, secret: str) -> HttpResponse:
        # Rendered in this response only: never stored in messages, sessions or logs.
        context = {
            **self.admin_site.each_context(request),
            "title": f"Signing secret of '{obj.name}'",
            "channel": obj,
            "secret": secret,
            "opts": self.model._meta,
            "continue_url": reverse("admin:notifications_channel_change", args=[obj.pk]),
        }
        response = TemplateResponse(request, "admin/notifications/channel_secret.html", context)
        response["Cache-Control"] = "no-store"
        return response

    def response_add(self, request: HttpRequest, obj: Channel, post_url_continue: str | None = None) -> HttpResponse:
        secret = getattr(request, "_courier_new_secret", None)
        if secret:
            return self._secret_page(request, obj, secret)
        return super().response_add(request, obj, post_url_continue)

    def response_change(self, request: HttpRequest, obj: Channel) -> HttpResponse:
        secret = getattr(request, "_courier_new_secret", None)
        if secret:
            return self._secret_page(request, obj, secret)
        return super().response_change(request, obj)

    def save_form(self, request: HttpRequest, form: ChannelForm, change: bool) -> Channel:
        channel = super().save_form(request, form, change)
        request._courier_new_secret = form.generated_secret
        return channel

    def delete_model(self, request: HttpRequest, obj: Channel) -> None:
        with transaction.atomic():
            AuditLogEntry.objects.record(
                entity_type="notification_channel",
                entity_id=obj.pk,
                operation="deleted",
                performed_by=request.user,
                details={"name": obj.name},
            )
            super().delete_model(request, obj)


@admin.register(Rule)
class RuleAdmin(AuditHistoryMixin, RefusalAuditMixin, ModelAdmin):
    audit_entity_type = "notification_rule"
    form = RuleForm
    list_display = ("name", "enabled_badge", "event_list", "quiet", "channel_list", "scope")
    list_filter = ("enabled", "quiet")
    search_fields = ("name",)
    ordering = ("name",)
    filter_horizontal = ("channels", "jobs", "chains", "monitors", "tags")

    def get_queryset(self, request: HttpRequest) -> QuerySet:
        return super().get_queryset(request).prefetch_related("channels", "jobs", "chains", "monitors", "tags")

    @admin.display(description="enabled")
    def enabled_badge(self, rule: Rule) -> str:
        return badge("enabled", "good") if rule.enabled else badge("disabled", "idle")

    @admin.display(description="events")
    def event_list(self, rule: Rule) -> str:
        labels = dict(EventKind.choices)
        return ", ".join(labels.get(kind, kind) for kind in rule.events)

    @admin.display(description="channels")
    def channel_list(self, rule: Rule) -> str:
        return ", ".join(channel.name for channel in rule.channels.all())

    @admin.display(description="scope")
    def scope(self, rule: Rule) -> str:
        parts = [
            *(f"job {job.name}" for job in rule.jobs.all()),
            *(f"chain {chain.name}" for chain in rule.chains.all()),
            *(f"monitor {monitor.name}" for monitor in rule.monitors.all()),
            *(f"tag {tag.name}" for tag in rule.tags.all()),
        ]
        return ", ".join(parts) or "everything"

    def save_related(self, request: HttpRequest, form: RuleForm, formsets: Any, change: bool) -> None:
        super().save_related(request, form, formsets, change)
        rule = form.instance
        _audit_change(
            request,
            "notification_rule",
            rule,
            change,
            {
                "events": list(rule.events),
                "quiet": rule.quiet,
                "enabled": rule.enabled,
                "channels": sorted(channel.name for channel in rule.channels.all()),
            },
        )

    def save_model(self, request: HttpRequest, obj: Rule, form: RuleForm, change: bool) -> None:
        if not change:
            obj.created_by = request.user.get_username()
        super().save_model(request, obj, form, change)

    def delete_model(self, request: HttpRequest, obj: Rule) -> None:
        with transaction.atomic():
            AuditLogEntry.objects.record(
                entity_type="notification_rule",
                entity_id=obj.pk,
                operation="deleted",
                performed_by=request.user,
                details={"name": obj.name},
            )
            super().delete_model(request, obj)


class AttemptInline(TabularInline):
    model = Attempt
    extra = 0
    fields = ("attempt", "started_at", "duration_ms", "outcome", "response_code", "error")
    readonly_fields = fields
    can_delete = False

    def has_add_permission(self, request: Any, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: Any, obj: Any = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(ModelAdmin):
    list_display = (
        "created_at",
        "state_badge",
        "event_kind",
        "channel",
        "subject",
        "attempts",
        "next_try",
        "last_error",
    )
    list_filter = ("state", "event_kind", "channel")
    search_fields = ("subject", "=event_id")
    list_select_related = ("channel",)
    ordering = ("-created_at",)
    show_full_result_count = False
    paginator = CappedCountPaginator
    list_per_page = 50
    inlines = [AttemptInline]
    actions = ("send_again",)
    readonly_fields = (
        "event_kind",
        "event_type",
        "event_id",
        "event_occurred_at",
        "channel",
        "rule",
        "state",
        "attempts",
        "next_attempt_at",
        "sent_at",
        "last_error",
        "subject",
        "body",
        "created_at",
    )
    fields = readonly_fields

    def has_add_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Any = None) -> bool:
        return False

    def has_send_again_permission(self, request: HttpRequest) -> bool:
        return request.user.has_perm("notifications.test_channel")

    @admin.display(description="state", ordering="state")
    def state_badge(self, delivery: Delivery) -> str:
        return badge(delivery.state, DELIVERY_TONES.get(delivery.state, "idle"), delivery.last_error or "")

    @admin.display(description="next try")
    def next_try(self, delivery: Delivery) -> str:
        if delivery.state != Delivery.State.PENDING or delivery.attempts == 0:
            return "—"
        return f"{timezone.localtime(delivery.next_attempt_at):%H:%M:%S}"

    @admin.action(description="Send the selected failed deliveries again", permissions=["send_again"])
    def send_again(self, request: HttpRequest, queryset: QuerySet) -> None:
        with transaction.atomic():
            ids = list(queryset.filter(state=Delivery.State.FAILED).values_list("id", flat=True))
            Delivery.objects.filter(id__in=ids).update(state=Delivery.State.PENDING, next_attempt_at=timezone.now())
            for delivery_id in ids:
                AuditLogEntry.objects.record(
                    entity_type="system",
                    entity_id="notifications",
                    operation="delivery_sent_again",
                    performed_by=request.user,
                    details={"delivery_id": str(delivery_id)},
                )
        messages.info(request, f"{len(ids)} failed deliveries queued to be sent again.")

"""Console forms for jobs: failure policy fields, step configuration checked against the step type's schema."""

from __future__ import annotations

import difflib
import json
import re
from typing import Any

from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import MaxValueValidator, MinValueValidator
from django.utils.html import format_html_join

from courier_site.errors import CourierError
from jobs.config_fields import ConfigValueField
from jobs.definitions import check_references
from jobs.engine.flow import parse
from jobs.policy import POLICY_TYPES, FailurePolicy
from jobs.secrets import seal_config
from jobs.steps.base import ConfigField, get_step_type, registered_types

ALIAS = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def step_type_choices() -> list[tuple[str, str]]:
    return [
        (key, f"{key} — {cls.label or cls.description or key}")
        for key, cls in registered_types().items()
        if not key.startswith("test.")
    ]


def step_type_reference() -> str:
    """HTML listing every step type with its documented keys (help under the configuration field)."""
    rows = []
    for key, cls in registered_types().items():
        if key.startswith("test."):
            continue
        keys = ", ".join(f"{f.name}{'*' if f.required else ''} ({f.kind})" for f in cls.fields) or "no keys"
        rows.append((key, keys))
    return format_html_join("", "<div><code>{}</code>: {}</div>", rows)


class JobForm(forms.ModelForm):
    """Job with its failure policy as separate fields instead of raw JSON."""

    policy_type = forms.ChoiceField(
        choices=[(value, value.replace("_", " ")) for value in POLICY_TYPES],
        initial="stop",
        help_text="What happens when a step fails: stop the run, retry the step, queue a new run, "
        "or skip the step and go on (the run is then not counted a success).",
    )
    max_retries = forms.IntegerField(
        min_value=0, max_value=10, initial=3, help_text="Retries for retry step / retry job."
    )
    backoff_base_seconds = forms.FloatField(
        min_value=0, max_value=3600, initial=1, help_text="First retry delay; doubles each retry."
    )
    backoff_max_seconds = forms.FloatField(
        min_value=0, max_value=86400, initial=60, help_text="Longest delay between step retries."
    )

    class Meta:
        fields = ("name", "description", "is_enabled")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        policy = (self.instance.failure_policy if self.instance and self.instance.pk else None) or {}
        for key in ("max_retries", "backoff_base_seconds", "backoff_max_seconds"):
            if key in policy:
                self.fields[key].initial = policy[key]
        self.fields["policy_type"].initial = policy.get("type", "stop")

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        data = {
            "type": cleaned.get("policy_type") or "stop",
            "max_retries": cleaned.get("max_retries") if cleaned.get("max_retries") is not None else 3,
            "backoff_base_seconds": cleaned.get("backoff_base_seconds") or 0,
            "backoff_max_seconds": cleaned.get("backoff_max_seconds") or 0,
        }
        try:
            self.instance.failure_policy = FailurePolicy.from_json(data).to_json()
        except CourierError as error:
            raise ValidationError({"backoff_max_seconds": str(error)}) from error
        return cleaned


# Orders and timeouts a step may have: ck_job_steps_order_positive and ck_job_steps_timeout_positive
# hold the lower bounds in the database; the upper bounds keep reordering (which parks moving
# rows above every wanted order) far from the integer limit.
MAX_STEP_ORDER = 9999
MAX_STEP_TIMEOUT_SECONDS = 7 * 24 * 3600
UNKNOWN_STEP_TYPE = "[E2001] unknown step type '%(value)s'; choose one of the listed types"
STEP_PAGE_FIELDS = ("job", "step_order", "name", "type_key", "alias", "timeout_seconds")
CONFIG_PREFIX = "config__"


def has_nul(value: Any) -> bool:
    """Whether a NUL character hides anywhere in a JSON value (PostgreSQL's jsonb cannot store one)."""
    if isinstance(value, str):
        return "\x00" in value
    if isinstance(value, dict):
        return any(has_nul(key) or has_nul(item) for key, item in value.items())
    if isinstance(value, list):
        return any(has_nul(item) for item in value)
    return False


class JobStepForm(forms.ModelForm):
    """One step row: the type must be registered and the configuration must fit its schema."""

    type_key = forms.ChoiceField(
        choices=step_type_choices, help_text="What the step does.", error_messages={"invalid_choice": UNKNOWN_STEP_TYPE}
    )

    class Meta:
        fields = ("step_order", "name", "type_key", "alias", "configuration", "timeout_seconds")

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if "configuration" in self.fields:
            self.fields["configuration"].help_text = step_type_reference()
            # A long path stays on one line (the box scrolls) instead of breaking mid-word.
            self.fields["configuration"].widget.attrs.update(
                {"wrap": "off", "rows": 4, "style": "font-family: monospace; min-width: 28rem; white-space: pre"}
            )
        for name, lowest, highest in (
            ("step_order", 0, MAX_STEP_ORDER),
            ("timeout_seconds", 1, MAX_STEP_TIMEOUT_SECONDS),
        ):
            if name in self.fields:
                self.fields[name].validators += [MinValueValidator(lowest), MaxValueValidator(highest)]
                self.fields[name].widget.attrs.update({"min": lowest, "max": highest})

    def clean_alias(self) -> str | None:
        alias = (self.cleaned_data.get("alias") or "").strip() or None
        if alias and not ALIAS.match(alias):
            raise ValidationError("An alias starts with a letter or _ and holds only letters, digits and _.")
        return alias

    def clean_configuration(self) -> Any:
        configuration = self.cleaned_data.get("configuration")
        if configuration is None:
            raise ValidationError('[E2002] the configuration must be a JSON object, e.g. {"path": "in/*.csv"}')
        if has_nul(configuration):
            raise ValidationError("[E2002] the configuration holds a NUL character (\\u0000), which cannot be stored")
        return configuration

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        type_key = cleaned.get("type_key")
        configuration = cleaned.get("configuration")
        if type_key and configuration is not None:
            label = f"step {cleaned.get('step_order')} ({cleaned.get('name') or type_key})"
            try:
                problems = get_step_type(type_key).validate(configuration, label)
            except CourierError as error:
                raise ValidationError({"type_key": str(error)}) from error
            if problems:
                raise ValidationError({"configuration": [f"[E2002] {problem}" for problem in problems]})
            cleaned["configuration"] = seal_config(type_key, configuration)
        return cleaned


class StepPageForm(JobStepForm):
    """A step on its own page: its configuration as one field per documented key of its type.

    step_page_form() adds the config__<key> fields of one type; the step's order and alias are
    checked against the other steps of its job [E2009].
    """

    config_type_key = ""

    class Meta:
        fields = STEP_PAGE_FIELDS

    def config_names(self) -> list[str]:
        return [name for name in self.fields if name.startswith(CONFIG_PREFIX)]

    def clean(self) -> dict[str, Any]:
        cleaned = super().clean()
        self._check_slot(cleaned)
        type_key = cleaned.get("type_key")
        if not type_key or type_key != self.config_type_key:
            return cleaned
        configuration = {
            name[len(CONFIG_PREFIX) :]: cleaned[name]
            for name in self.config_names()
            if cleaned.get(name) not in (None, "")
        }
        stored = self.instance.configuration if self.instance.pk else {}
        for config_field in get_step_type(type_key).fields:
            # Write-only: an empty secret field keeps the stored value.
            if config_field.secret and config_field.name not in configuration and config_field.name in (stored or {}):
                configuration[config_field.name] = stored[config_field.name]
        if has_nul(configuration):
            self.add_error(None, "[E2002] the configuration holds a NUL character, which cannot be stored")
            return cleaned
        label = f"step {cleaned.get('step_order')} ({cleaned.get('name') or type_key})"
        for problem in get_step_type(type_key).validate(configuration, label):
            key = next((name for name in self.config_names() if f"'{name[len(CONFIG_PREFIX) :]}'" in problem), None)
            self.add_error(key, f"[E2002] {problem}")
        self.instance.configuration = seal_config(type_key, configuration)
        return cleaned

    def _check_slot(self, cleaned: dict[str, Any]) -> None:
        job = cleaned.get("job")
        if job is None:
            return
        others = self._meta.model.objects.filter(job=job).exclude(pk=self.instance.pk)
        order = cleaned.get("step_order")
        taken = others.filter(step_order=order).first() if order is not None else None
        if taken is not None:
            used = set(others.values_list("step_order", flat=True))
            free = next(number for number in range(MAX_STEP_ORDER + 2) if number not in used)
            self.add_error(
                "step_order",
                f"[E2009] order {order} is taken by step '{taken.name}' of job '{job}'; the first free order is {free}",
            )
        alias = cleaned.get("alias")
        taken = others.filter(alias=alias).first() if alias else None
        if taken is not None:
            self.add_error("alias", f"[E2009] alias '{alias}' is already used by step '{taken.name}' of job '{job}'")


def step_page_form(base: type[StepPageForm], type_key: str, step: Any = None) -> type[StepPageForm]:
    """base (the admin's model form) with the configuration fields of type_key, filled from step."""
    config_form = config_form_class(type_key)
    attrs: dict[str, Any] = {"config_type_key": type_key}
    for name, field in config_form.base_fields.items():
        if step is not None and not is_secret_field(type_key, name):
            field.initial = (step.configuration or {}).get(name, field.initial)
        attrs[f"{CONFIG_PREFIX}{name}"] = field
    return type("StepConfigurationForm", (base,), attrs)


class JobStepFormSet(forms.BaseInlineFormSet):
    """Checks the definition as a whole: block structure and context references."""

    def clean(self) -> None:
        super().clean()
        steps = []
        orders: set[int] = set()
        aliases: set[str] = set()
        for form in self.forms:
            if not hasattr(form, "cleaned_data") or not form.cleaned_data or form.cleaned_data.get("DELETE"):
                continue
            data = form.cleaned_data
            if data.get("step_order") in orders:
                raise ValidationError(f"[E2009] two steps have order {data.get('step_order')}; orders must be unique")
            orders.add(data.get("step_order"))
            if data.get("alias") and data["alias"] in aliases:
                raise ValidationError(f"[E2009] two steps have alias '{data['alias']}'; aliases must be unique")
            aliases.add(data.get("alias"))
            steps.append(
                {
                    "step_order": data.get("step_order"),
                    "name": data.get("name"),
                    "type_key": data.get("type_key"),
                    "alias": data.get("alias"),
                    "configuration": data.get("configuration") or {},
                }
            )
        if any(step["step_order"] is None or step["type_key"] is None for step in steps):
            return  # field errors are shown on the rows
        try:
            parse(steps)
        except CourierError as error:
            raise ValidationError(str(error)) from error
        problems = check_references(steps)
        if problems:
            raise ValidationError([f"[E2003] {problem}" for problem in problems])


def config_form_class(type_key: str) -> type[forms.Form]:
    """A form with one field per documented key of a step type (the per-type configuration editor)."""
    step_type = get_step_type(type_key)
    form_fields: dict[str, forms.Field] = {}
    for config_field in step_type.fields:
        form_fields[config_field.name] = _form_field(config_field)
    return type(f"{type_key.replace('.', '_')}_ConfigForm", (forms.Form,), form_fields)


def _form_field(config_field: ConfigField) -> forms.Field:
    common = {"required": config_field.required, "help_text": config_field.help, "label": config_field.name}
    if config_field.choices:
        return forms.ChoiceField(choices=[(choice, choice) for choice in config_field.choices], **common)
    if config_field.kind == "boolean" and config_field.default is None:
        # Three answers: unset leaves the step type's own rule (its help says which) in force.
        widget = forms.NullBooleanSelect()
        widget.choices = [("unknown", "unset (the step's default)"), ("true", "yes"), ("false", "no")]
        return forms.NullBooleanField(**{**common, "required": False}, widget=widget)
    if config_field.kind == "boolean":
        return forms.BooleanField(**{**common, "required": False}, initial=config_field.default)
    if config_field.kind in ("string",):
        widget = forms.PasswordInput(render_value=False) if config_field.secret else None
        return (
            forms.CharField(widget=widget, initial=config_field.default, **common)
            if widget
            else forms.CharField(initial=config_field.default, **common)
        )
    # Paths one per line; numbers, lists and objects as JSON; context: references as written.
    return ConfigValueField(config_field.kind, initial=config_field.default, **common)


def version_diff(old: dict[str, Any], new: dict[str, Any], old_label: str, new_label: str) -> list[str]:
    """Unified diff of two version snapshots as pretty-printed JSON lines."""
    before = json.dumps(old, indent=2, sort_keys=True).splitlines()
    after = json.dumps(new, indent=2, sort_keys=True).splitlines()
    return list(difflib.unified_diff(before, after, fromfile=old_label, tofile=new_label, lineterm=""))


def is_secret_field(type_key: str, name: str) -> bool:
    return any(field.name == name and field.secret for field in get_step_type(type_key).fields)

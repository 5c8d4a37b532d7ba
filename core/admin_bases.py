"""Admin bases for rows only services write (staff look; nobody adds, edits or deletes here), the
confirmation page every action that bans, revokes or moves money goes through, and money as staff read it."""

from collections.abc import Callable
from decimal import Decimal

from django import forms
from django.contrib import admin
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.template.response import TemplateResponse
from django.utils.html import format_html
from django.utils.safestring import mark_safe
from django.utils.timesince import timesince


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


class ReadOnlyInline(admin.TabularInline):
    """Shows ``fields``, all read-only."""

    extra = 0
    can_delete = False

    def get_readonly_fields(self, request, obj=None):
        return self.fields

    def has_add_permission(self, request, obj=None):
        return False

    def has_change_permission(self, request, obj=None):
        return False


def age(when) -> str:
    """How long ago, as staff read it in a list ("4 minutes ago"); the page shows the exact time."""
    if when is None:
        return "—"
    return f"{timesince(when, depth=1)} ago"


def money(amount: Decimal | None) -> str:
    """An amount rounded for people in lists (``7.6``, ``0.00000028``); pages show it exact."""
    if amount is None:
        return "—"
    rounded = amount.quantize(Decimal("0.01")) if abs(amount) >= 1 else amount.normalize()
    return f"{rounded:,f}"


class ReasonForm(forms.Form):
    reason = forms.CharField(
        max_length=300, help_text="Recorded in the audit log with your name and the time", widget=forms.TextInput
    )


def confirm_action(
    model_admin: admin.ModelAdmin,
    request,
    objects,
    *,
    title: str,
    changes: list[str],
    act: Callable[[dict], None],
    money_moved: str = "",
    form_class: type[forms.Form] = ReasonForm,
    submit: str = "Confirm",
):
    """The page between choosing an action and taking it: what will change (``changes``), the money
    involved and a reason. Once confirmed with a valid form, ``act(form.cleaned_data)`` takes the
    action and the admin goes back to the list; until then the page is shown (again, with errors)."""
    if "apply" in request.POST:
        form = form_class(request.POST)
        if form.is_valid():
            act(form.cleaned_data)
            return None
    else:
        form = form_class()
    return TemplateResponse(
        request,
        "admin/confirm_action.html",
        {
            **model_admin.admin_site.each_context(request),
            "title": title,
            "opts": model_admin.model._meta,
            "objects": list(objects),
            "changes": changes,
            "money_moved": money_moved,
            "form": form,
            "submit": submit,
            "action": request.POST.get("action", ""),
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        },
    )


def presence_filter(title: str, *, empty: str, filled: str) -> type[admin.EmptyFieldListFilter]:
    """A filter on whether a field is set, in staff's words: ``("revoked_at", presence_filter("revoked",
    empty="Active", filled="Revoked"))`` rather than "By revoked at: Empty / Not empty"."""
    labels = {"Empty": empty, "Not empty": filled}

    class PresenceFilter(admin.EmptyFieldListFilter):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.title = title

        def choices(self, changelist):
            for choice in super().choices(changelist):
                yield {**choice, "display": labels.get(str(choice["display"]), choice["display"])}

    return PresenceFilter


def outcome_chart(buckets: list[dict], *, label: str) -> str:
    """A small bar chart of ``[{"start", "completed", "failed"}]``: completed in green under failed in
    red, each bar titled with its figures."""
    width, height, gap = 12, 40, 2
    tallest = max([bucket["completed"] + bucket["failed"] for bucket in buckets] + [1])
    bars = []
    for n, bucket in enumerate(buckets):
        x = n * (width + gap)
        done = round(height * bucket["completed"] / tallest)
        failed = round(height * bucket["failed"] / tallest)
        title = f"{bucket['start']:%H:%M}: {bucket['completed']} completed, {bucket['failed']} failed"
        bars.append(
            format_html(
                '<g><title>{}</title><rect x="{}" y="{}" width="{}" height="{}" fill="#3a7d44"></rect>'
                '<rect x="{}" y="{}" width="{}" height="{}" fill="#ba2121"></rect></g>',
                title,
                x,
                height - done,
                width,
                done,
                x,
                height - done - failed,
                width,
                failed,
            )
        )
    return format_html(
        '<svg class="outcome-chart" role="img" aria-label="{}" width="{}" height="{}" viewBox="0 0 {} {}">{}</svg>',
        label,
        len(buckets) * (width + gap),
        height,
        len(buckets) * (width + gap),
        height,
        mark_safe("".join(bars)),  # each bar built by format_html above
    )

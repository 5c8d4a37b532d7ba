import django_filters
from django import forms
from django.db.models import Q
from django_filters.fields import IsoDateTimeField
from rest_framework.exceptions import ValidationError

from jobs.models import AITBC_STATE, Job, JobStatus

# Every spelling clients send: ours, the AITBC states', and the AITBC CLI's "pending" (queued).
_STATUS_BY_SPELLING = {
    **{s.value: s.value for s in JobStatus},
    **{v.lower(): k for k, v in AITBC_STATE.items()},
    "pending": JobStatus.QUEUED,
}


class GivenIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 date-time; a parameter sent empty is refused rather than ignored."""

    def clean(self, value):
        if value == "":
            raise forms.ValidationError("Enter an ISO 8601 date and time.", code="invalid")
        return super().clean(value)


class GivenIsoDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = GivenIsoDateTimeField


class JobFilter(django_filters.FilterSet):
    status = django_filters.CharFilter(
        method="filter_status",
        help_text="queued (or pending), running, completed, … (AITBC spellings too); comma-separated for several.",
    )
    type = django_filters.CharFilter(field_name="type")
    job_type = django_filters.CharFilter(field_name="type")
    model = django_filters.CharFilter(field_name="model")
    from_time = GivenIsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    to_time = GivenIsoDateTimeFilter(field_name="created_at", lookup_expr="lte")

    class Meta:
        model = Job
        fields = ["status", "type", "job_type", "model", "from_time", "to_time"]

    def filter_status(self, queryset, name, value):
        wanted = set()
        for spelling in value.split(","):
            status = _STATUS_BY_SPELLING.get(spelling.strip().lower())
            if status is None:
                raise ValidationError({"status": [f"Unknown status {spelling.strip()!r}."]})
            wanted.add(status)
        return queryset.filter(Q(status__in=wanted))

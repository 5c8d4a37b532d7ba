import django_filters

from jobs.models import Receipt


class ReceiptFilter(django_filters.FilterSet):
    client = django_filters.CharFilter(field_name="job__client__username", help_text="The client's name")
    job_id = django_filters.UUIDFilter(field_name="job_id")

    class Meta:
        model = Receipt
        fields = ["client", "job_id"]


class ExplorerReceiptFilter(django_filters.FilterSet):
    """The public receipt list's filters (the AITBC CLI's ``client receipts --job-id``)."""

    job_id = django_filters.UUIDFilter(field_name="job_id")

    class Meta:
        model = Receipt
        fields = ["job_id"]

from django.contrib import admin, messages

from webhooks import services
from webhooks.models import WebhookDelivery, WebhookEndpoint


@admin.register(WebhookEndpoint)
class WebhookEndpointAdmin(admin.ModelAdmin):
    list_display = ["url", "owner", "events", "enabled", "disabled_at", "created_at"]
    list_filter = ["enabled"]
    list_select_related = ["owner"]
    search_fields = ["url", "owner__username", "description"]
    readonly_fields = ["id", "owner", "disabled_at", "disabled_reason", "created_at", "updated_at"]
    fields = ["id", "owner", "url", "description", "events", "enabled", *readonly_fields[2:]]
    actions = ["enable"]

    def has_add_permission(self, request):
        return False  # an endpoint's secret is shown to its owner once, at creation: owners add theirs

    def get_readonly_fields(self, request, obj=None):
        return [*self.readonly_fields, "url", "events", "enabled"]

    @admin.action(description="Enable again (pending deliveries are sent)")
    def enable(self, request, queryset):
        for endpoint in queryset.filter(enabled=False):
            services.endpoint_enable(endpoint=endpoint)
        self.message_user(request, "The selected webhooks are enabled.", messages.SUCCESS)


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(admin.ModelAdmin):
    list_display = [
        "message_id",
        "event_type",
        "endpoint",
        "job",
        "status",
        "attempts",
        "response_status",
        "created_at",
    ]
    list_filter = ["status", "event_type"]
    list_select_related = ["endpoint", "job"]
    search_fields = ["message_id", "endpoint__url", "endpoint__owner__username"]
    raw_id_fields = ["endpoint", "job"]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

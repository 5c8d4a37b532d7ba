from django.urls import path

from webhooks.api import views

urlpatterns = [
    path("v1/webhooks", views.WebhookListView.as_view(), name="webhooks"),
    path("v1/webhooks/<uuid:webhook_id>", views.WebhookDetailView.as_view(), name="webhook-detail"),
    path("v1/webhooks/<uuid:webhook_id>/test", views.WebhookTestView.as_view(), name="webhook-test"),
    path(
        "v1/webhooks/<uuid:webhook_id>/rotate-secret",
        views.WebhookRotateSecretView.as_view(),
        name="webhook-rotate-secret",
    ),
    path("v1/webhooks/<uuid:webhook_id>/enable", views.WebhookEnableView.as_view(), name="webhook-enable"),
    path(
        "v1/webhooks/<uuid:webhook_id>/deliveries", views.WebhookDeliveryListView.as_view(), name="webhook-deliveries"
    ),
]

from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework import generics, status
from rest_framework.response import Response
from rest_framework.views import APIView

from core.api.pagination import ItemsLimitOffsetPagination
from core.api.permissions import IsClient
from core.errors import NotFound
from webhooks import selectors, services
from webhooks.api.serializers import (
    WebhookCreateSerializer,
    WebhookDeliverySerializer,
    WebhookSerializer,
    WebhookWithSecretSerializer,
)
from webhooks.models import WebhookDelivery, WebhookEndpoint

ERRORS = {
    401: OpenApiResponse(description="No or invalid API key"),
    403: OpenApiResponse(description="The key's scope does not allow this"),
    404: OpenApiResponse(description="No such webhook (or not yours)"),
}
# Adding or enabling one while the cache (Redis) does not answer.
CACHE_DOWN = {503: OpenApiResponse(description="The cache does not answer just now: try again shortly")}


class OwnWebhookMixin:
    """A caller sees and changes only its own webhooks."""

    permission_classes = [IsClient]

    def endpoint(self, webhook_id) -> WebhookEndpoint:
        endpoint = selectors.endpoint_of(owner=self.request.user, endpoint_id=webhook_id)
        if endpoint is None:
            raise NotFound("Webhook not found.", code="WEBHOOK_NOT_FOUND")
        return endpoint


class WebhookListView(OwnWebhookMixin, generics.GenericAPIView):
    queryset = WebhookEndpoint.objects.none()
    serializer_class = WebhookSerializer
    pagination_class = ItemsLimitOffsetPagination

    @extend_schema(summary="List my webhooks", responses={200: WebhookSerializer(many=True), **ERRORS})
    def get(self, request):
        page = self.paginate_queryset(selectors.endpoints_of(owner=request.user))
        return self.get_paginated_response(WebhookSerializer(page, many=True).data)

    @extend_schema(
        summary="Add a webhook (its signing secret is shown once)",
        request=WebhookCreateSerializer,
        responses={
            201: WebhookWithSecretSerializer,
            409: OpenApiResponse(description="Too many webhooks"),
            422: OpenApiResponse(description="Invalid, or a private address"),
            **ERRORS,
            **CACHE_DOWN,
        },
    )
    def post(self, request):
        create = WebhookCreateSerializer(data=request.data)
        create.is_valid(raise_exception=True)
        endpoint, secret = services.endpoint_create(owner=request.user, **create.validated_data)
        data = WebhookWithSecretSerializer(endpoint, context={"secret": secret}).data
        return Response(data, status=status.HTTP_201_CREATED)


class WebhookDetailView(OwnWebhookMixin, APIView):
    @extend_schema(summary="A webhook", responses={200: WebhookSerializer, **ERRORS})
    def get(self, request, webhook_id):
        return Response(WebhookSerializer(self.endpoint(webhook_id)).data)

    @extend_schema(summary="Remove a webhook and its delivery log", responses={204: None, **ERRORS})
    def delete(self, request, webhook_id):
        services.endpoint_delete(endpoint=self.endpoint(webhook_id))
        return Response(status=status.HTTP_204_NO_CONTENT)


class WebhookTestView(OwnWebhookMixin, APIView):
    @extend_schema(
        summary="Send a signed webhook.test delivery (tried once; see the delivery log)",
        request=None,
        responses={202: WebhookDeliverySerializer, **ERRORS},
    )
    def post(self, request, webhook_id):
        delivery = services.endpoint_test(endpoint=self.endpoint(webhook_id))
        return Response(WebhookDeliverySerializer(delivery).data, status=status.HTTP_202_ACCEPTED)


class WebhookRotateSecretView(OwnWebhookMixin, APIView):
    @extend_schema(
        summary="Rotate a webhook's signing secret (the old one signs too for a while)",
        request=None,
        responses={200: WebhookWithSecretSerializer, **ERRORS},
    )
    def post(self, request, webhook_id):
        endpoint = self.endpoint(webhook_id)
        secret = services.endpoint_rotate_secret(endpoint=endpoint)
        return Response(WebhookWithSecretSerializer(endpoint, context={"secret": secret}).data)


class WebhookEnableView(OwnWebhookMixin, APIView):
    @extend_schema(
        summary="Enable a disabled webhook again; its pending deliveries are sent",
        request=None,
        responses={200: WebhookSerializer, **ERRORS, **CACHE_DOWN},
    )
    def post(self, request, webhook_id):
        return Response(WebhookSerializer(services.endpoint_enable(endpoint=self.endpoint(webhook_id))).data)


class WebhookDeliveryListView(OwnWebhookMixin, generics.GenericAPIView):
    queryset = WebhookDelivery.objects.none()
    serializer_class = WebhookDeliverySerializer
    pagination_class = ItemsLimitOffsetPagination

    @extend_schema(
        summary="A webhook's delivery log, newest first",
        responses={200: WebhookDeliverySerializer(many=True), **ERRORS},
    )
    def get(self, request, webhook_id):
        page = self.paginate_queryset(selectors.deliveries_of(endpoint=self.endpoint(webhook_id)))
        return self.get_paginated_response(WebhookDeliverySerializer(page, many=True).data)

import logging

from django.db import connection
from django.utils import timezone
from drf_spectacular.utils import extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from explorer.selectors import network_figures
from jobs.models import JobStatus

logger = logging.getLogger(__name__)

HealthSerializer = inline_serializer("Health", {"status": serializers.CharField(), "time": serializers.DateTimeField()})


class PublicView(APIView):
    """Open to probes and scrapers: no key, no rate limit."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []


class HealthView(PublicView):
    """Liveness: the process answers."""

    @extend_schema(summary="Health", responses={200: HealthSerializer})
    def get(self, request):
        return Response({"status": "ok", "time": timezone.now()})


class ReadyView(PublicView):
    """Readiness: the database answers too."""

    @extend_schema(summary="Readiness (checks the database)", responses={200: HealthSerializer, 503: HealthSerializer})
    def get(self, request):
        try:
            with connection.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception:  # any database failure means "not ready"
            logger.exception("readiness check: the database does not answer")
            return Response({"status": "unavailable", "time": timezone.now()}, status=503)
        return Response({"status": "ok", "time": timezone.now()})


class MetricsSummaryView(APIView):
    """Public, but rate limited like any anonymous caller: it queries the database."""

    permission_classes = [AllowAny]

    @extend_schema(
        summary="Metrics summary (JSON)",
        responses={
            200: inline_serializer(
                "MetricsSummary",
                {
                    "active_jobs": serializers.DictField(child=serializers.IntegerField()),
                    "miners": serializers.DictField(child=serializers.IntegerField()),
                    "queue_depth": serializers.ListField(child=serializers.DictField()),
                },
            )
        },
    )
    def get(self, request):
        figures = network_figures()
        return Response(
            {
                "active_jobs": {status: figures["jobs"][status] for status in JobStatus.ACTIVE},
                "miners": figures["miners"],
                "queue_depth": figures["queue_by_priority"],
            }
        )

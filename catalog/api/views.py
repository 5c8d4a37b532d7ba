from drf_spectacular.utils import extend_schema
from rest_framework.response import Response
from rest_framework.views import APIView

from catalog.api.serializers import CatalogModelSerializer, ModelListSerializer
from catalog.selectors import catalog_with_miner_counts
from core.errors import NotFound


class ModelListView(APIView):
    """The enabled models of the catalog (OpenAI's model list shape), each with its online miners."""

    @extend_schema(operation_id="models_list", responses=ModelListSerializer, tags=["models"])
    def get(self, request):
        models = catalog_with_miner_counts()
        return Response({"object": "list", "data": CatalogModelSerializer(models, many=True).data})


class ModelDetailView(APIView):
    @extend_schema(operation_id="models_retrieve", responses=CatalogModelSerializer, tags=["models"])
    def get(self, request, model_id: str):
        entry = catalog_with_miner_counts().filter(name=model_id).first()
        if entry is None:
            raise NotFound(f"Model {model_id!r} is not in the catalog.", code="MODEL_NOT_FOUND")
        return Response(CatalogModelSerializer(entry).data)

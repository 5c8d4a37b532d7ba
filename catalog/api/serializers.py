from rest_framework import serializers


class CatalogModelSerializer(serializers.Serializer):
    """One model in the shape of OpenAI's model list, with the platform's own fields beside."""

    id = serializers.CharField(source="name")
    object = serializers.SerializerMethodField()
    created = serializers.SerializerMethodField()
    owned_by = serializers.SerializerMethodField()
    task = serializers.CharField()
    description = serializers.CharField()
    source_kind = serializers.CharField(help_text="directory, package or hub: where miners load the weights from.")
    source = serializers.CharField()
    default_max_tokens = serializers.IntegerField()
    max_tokens = serializers.IntegerField()
    price_per_1k_tokens = serializers.DecimalField(max_digits=18, decimal_places=8)
    default_params = serializers.DictField(help_text="Generation parameters a job gets unless it sets its own.")
    online_miners = serializers.IntegerField(help_text="Online miners serving this model now.")

    def get_object(self, entry) -> str:
        return "model"

    def get_created(self, entry) -> int:
        return int(entry.created_at.timestamp())

    def get_owned_by(self, entry) -> str:
        return "aitbc"


class ModelListSerializer(serializers.Serializer):
    object = serializers.CharField(default="list")
    data = CatalogModelSerializer(many=True)

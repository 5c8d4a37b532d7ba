"""OpenAI's request and answer shapes, for validation and the schema. Fields OpenAI defines that
the platform does not use (``frequency_penalty``, ``logit_bias``, …) are accepted and ignored."""

from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from catalog import payloads
from openai_compat.shapes import MAX_CHOICES, ROLES


class StreamOptionsSerializer(serializers.Serializer):
    include_usage = serializers.BooleanField(
        required=False, allow_null=True, help_text="Send a last chunk with the usage of the whole request."
    )


class GenerationCreateSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    max_tokens = serializers.IntegerField(required=False, allow_null=True, min_value=1, max_value=payloads.MAX_TOKENS)
    max_completion_tokens = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=payloads.MAX_TOKENS, help_text="Wins over max_tokens."
    )
    temperature = serializers.FloatField(
        required=False, allow_null=True, min_value=0, max_value=payloads.MAX_TEMPERATURE, help_text="0 is greedy."
    )
    top_p = serializers.FloatField(required=False, allow_null=True, min_value=0, max_value=1, help_text="Above 0.")
    stop = serializers.JSONField(
        required=False, allow_null=True, help_text=f"A string or up to {payloads.MAX_STOP_STRINGS} strings."
    )
    seed = serializers.IntegerField(required=False, allow_null=True, min_value=0, max_value=payloads.MAX_SEED)
    n = serializers.IntegerField(
        required=False, allow_null=True, min_value=1, max_value=MAX_CHOICES, help_text="Choices: one job each."
    )
    user = serializers.CharField(required=False, allow_blank=True, max_length=256)
    stream = serializers.BooleanField(required=False, allow_null=True, help_text="Answer as server-sent events.")
    stream_options = StreamOptionsSerializer(required=False, allow_null=True)


class ChatMessageSerializer(serializers.Serializer):
    role = serializers.ChoiceField(choices=ROLES, help_text="system, developer, user or assistant")
    content = serializers.JSONField(required=False, allow_null=True, help_text="Text, or a list of text parts.")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Chat",
            value={
                "model": "smollm2-135m",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
                "max_tokens": 40,
                "temperature": 0,
            },
            request_only=True,
        ),
    ]
)
class ChatCompletionCreateSerializer(GenerationCreateSerializer):
    messages = ChatMessageSerializer(many=True, allow_empty=False, max_length=payloads.MAX_MESSAGES)


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Completion",
            value={"model": "smollm2-135m", "prompt": "The capital of France is", "max_tokens": 8, "temperature": 0},
            request_only=True,
        ),
    ]
)
class CompletionCreateSerializer(GenerationCreateSerializer):
    prompt = serializers.JSONField(help_text=f"A string, or up to {MAX_CHOICES} of them (one choice each).")


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "Embeddings",
            value={"model": "minilm-l6", "input": ["a miner", "a client"], "encoding_format": "float"},
            request_only=True,
        ),
    ]
)
class EmbeddingCreateSerializer(serializers.Serializer):
    model = serializers.CharField(max_length=200)
    input = serializers.JSONField(help_text=f"A string or a list of up to {payloads.MAX_EMBEDDING_INPUTS}.")
    encoding_format = serializers.ChoiceField(
        choices=["float", "base64"],
        required=False,
        default="float",
        help_text="base64: each vector's little-endian float32 bytes.",
    )
    dimensions = serializers.IntegerField(required=False, allow_null=True, min_value=1, help_text="Not supported.")
    user = serializers.CharField(required=False, allow_blank=True, max_length=256)


# --- Answers ------------------------------------------------------------------------------


class UsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    completion_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class AssistantMessageSerializer(serializers.Serializer):
    role = serializers.CharField()
    content = serializers.CharField()
    refusal = serializers.CharField(allow_null=True)


class ChatChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    message = AssistantMessageSerializer()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.ChoiceField(choices=["stop", "length"])


class ChatCompletionSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="chatcmpl- and the first job's id")
    object = serializers.CharField(help_text="chat.completion")
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = ChatChoiceSerializer(many=True)
    usage = UsageSerializer()
    system_fingerprint = serializers.CharField(allow_null=True)


class CompletionChoiceSerializer(serializers.Serializer):
    index = serializers.IntegerField()
    text = serializers.CharField()
    logprobs = serializers.JSONField(allow_null=True)
    finish_reason = serializers.ChoiceField(choices=["stop", "length"])


class CompletionSerializer(serializers.Serializer):
    id = serializers.CharField(help_text="cmpl- and the first job's id")
    object = serializers.CharField(help_text="text_completion")
    created = serializers.IntegerField()
    model = serializers.CharField()
    choices = CompletionChoiceSerializer(many=True)
    usage = UsageSerializer()
    system_fingerprint = serializers.CharField(allow_null=True)


class EmbeddingSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="embedding")
    index = serializers.IntegerField()
    embedding = serializers.JSONField(help_text="A list of floats, or with encoding_format base64 a base64 string.")


class EmbeddingUsageSerializer(serializers.Serializer):
    prompt_tokens = serializers.IntegerField()
    total_tokens = serializers.IntegerField()


class EmbeddingListSerializer(serializers.Serializer):
    object = serializers.CharField(help_text="list")
    data = EmbeddingSerializer(many=True)
    model = serializers.CharField()
    usage = EmbeddingUsageSerializer()


class OpenAIErrorDetailSerializer(serializers.Serializer):
    message = serializers.CharField()
    type = serializers.CharField(help_text="invalid_request_error, insufficient_quota, requests, timeout, server_error")
    param = serializers.CharField(allow_null=True)
    code = serializers.CharField(allow_null=True, help_text="model_not_found, invalid_api_key, invalid_value, …")
    job_ids = serializers.ListField(
        child=serializers.CharField(), required=False, help_text="On a timeout: the jobs, still queued or running."
    )


class OpenAIErrorSerializer(serializers.Serializer):
    error = OpenAIErrorDetailSerializer()

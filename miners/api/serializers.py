import re
from decimal import Decimal, InvalidOperation

from drf_spectacular.utils import OpenApiExample, extend_schema_serializer
from rest_framework import serializers

from miners.capabilities import AGENT_TASK_MODEL, Capabilities
from miners.models import Miner

_MEMORY = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]i?b?)?\s*$", re.IGNORECASE)
MAX_PRICE = Decimal(10**10)
_MEMORY_UNITS_GB = {"k": 1 / 1024**2, "m": 1 / 1024, "g": 1, "t": 1024}


def _memory_gb(value) -> float:
    """GPU memory in GB from ``memory_mb``-style numbers or strings like ``"24GB"``."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if not 0 <= value < 1e9:
            raise serializers.ValidationError(f"GPU memory {value!r} is out of range.")
        return float(value)
    match = _MEMORY.match(str(value or ""))
    if not match:
        raise serializers.ValidationError(f"Unreadable GPU memory {value!r}.")
    unit = (match.group(2) or "g")[0].lower()
    return float(match.group(1)) * _MEMORY_UNITS_GB[unit]


def _gpu_memory_gb(gpu: dict) -> float:
    if "memory_mb" in gpu:
        return _memory_gb(gpu["memory_mb"]) / 1024
    return _memory_gb(gpu.get("memory_gb", gpu.get("memory", 0)))


def _str_list(value, field: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) and 0 < len(v) <= 200 for v in value):
        raise serializers.ValidationError({field: "Must be a list of names."})
    return tuple(dict.fromkeys(v.strip() for v in value))


def parse_capabilities(data: dict, *, concurrency=None, region=None, gpu_info=None) -> Capabilities:
    """Every register shape: ``{"capabilities": {...}}`` with ``gpus`` (the AITBC miner), ``gpu`` as an
    object (the AITBC CLI's ``{"gpu": {"model", "memory_gb", "cuda_cores"}}``) or a name, or no GPU
    at all (the CLI's default ``{"cpu": {"cores"}, "memory": {"gb"}}``, kept as sent); and the
    tutorial's list of models + ``gpu_info``. A miner naming no models serves every model outside
    the catalog (``jobs.matching``)."""
    caps = data if isinstance(data, dict) else {"models": data}
    gpus = caps.get("gpus") or ([gpu_info] if isinstance(gpu_info, dict) else [])
    if not isinstance(gpus, list) or not all(isinstance(g, dict) for g in gpus):
        raise serializers.ValidationError({"capabilities": "gpus must be a list of {name, memory_mb} objects."})
    best_gpu, vram_gb = "", 0.0
    for gpu in gpus:
        memory = _gpu_memory_gb(gpu)
        if memory >= vram_gb:
            best_gpu, vram_gb = str(gpu.get("name") or ""), memory
    gpu = caps.get("gpu")
    if not gpus and isinstance(gpu, dict):
        # The AITBC CLI's {"gpu": {"model", "memory_gb", "cuda_cores"}}.
        best_gpu = str(gpu.get("model") or gpu.get("name") or "")
        vram_gb = _gpu_memory_gb(gpu)
    elif not gpus and gpu:
        best_gpu, vram_gb = str(gpu), _memory_gb(caps.get("vram_gb", 0))
    price = caps.get("price")
    try:
        price = None if price is None else Decimal(str(price))
    except InvalidOperation:
        raise serializers.ValidationError({"capabilities": "price must be a number."}) from None
    if price is not None and not (price.is_finite() and 0 <= price < MAX_PRICE):
        raise serializers.ValidationError({"capabilities": "price must be a number from 0 to 10^10."})
    models = _str_list(caps.get("models"), "models")
    if AGENT_TASK_MODEL in models:
        raise serializers.ValidationError({"capabilities": f"{AGENT_TASK_MODEL!r} is reserved for agents' tasks."})
    max_jobs = caps.get("max_concurrent_jobs", concurrency) or 1
    if not isinstance(max_jobs, int) or isinstance(max_jobs, bool) or not 1 <= max_jobs <= 1024:
        raise serializers.ValidationError({"concurrency": "Must be an integer from 1 to 1024."})
    return Capabilities(
        models=models,
        gpu_name=best_gpu[:200],
        vram_gb=round(vram_gb, 3),
        cuda_version=str(caps.get("cuda") or caps.get("cuda_version") or "")[:16],
        region=str(caps.get("region") or region or "")[:64],
        price=price,
        max_concurrent_jobs=max_jobs,
        supported_tasks=_str_list(caps.get("supported_tasks"), "supported_tasks"),
        raw=caps,
    )


@extend_schema_serializer(
    examples=[
        OpenApiExample(
            "AITBC miner",
            request_only=True,
            value={
                "capabilities": {
                    "gpus": [{"name": "NVIDIA RTX 4090", "memory_mb": 24576}],
                    "cuda": "12.4",
                    "models": ["llama3.2"],
                    "price": 0.5,
                    "region": "eu-west",
                    "supported_tasks": ["inference"],
                    "max_concurrent_jobs": 2,
                },
                "concurrency": 2,
            },
        ),
        OpenApiExample(
            "Tutorial miner",
            request_only=True,
            value={
                "miner_id": "my-miner-001",
                "capabilities": ["llama3.2", "codellama"],
                "gpu_info": {"name": "NVIDIA RTX 4090", "memory": "24GB"},
            },
        ),
    ]
)
class MinerRegisterSerializer(serializers.Serializer):
    miner_id = serializers.CharField(required=False, max_length=128)
    capabilities = serializers.JSONField(
        required=False, help_text="An object (gpus, cuda, models, …) or a list of models."
    )
    concurrency = serializers.IntegerField(required=False, min_value=1, max_value=1024)
    region = serializers.CharField(required=False, allow_blank=True, max_length=64)
    public_key = serializers.CharField(required=False, allow_blank=True, max_length=128)
    gpu_info = serializers.DictField(required=False)

    def validate(self, attrs):
        capabilities = attrs.get("capabilities", {})
        if not isinstance(capabilities, (dict, list)):
            raise serializers.ValidationError({"capabilities": "Must be an object or a list of models."})
        attrs["parsed"] = parse_capabilities(
            capabilities,
            concurrency=attrs.get("concurrency"),
            region=attrs.get("region"),
            gpu_info=attrs.get("gpu_info"),
        )
        return attrs


class MinerCapabilitiesSerializer(serializers.Serializer):
    capabilities = serializers.JSONField(help_text="Same shape as at registration.")

    def to_internal_value(self, data):
        if isinstance(data, dict) and "capabilities" not in data:
            data = {"capabilities": data}
        return super().to_internal_value(data)

    def validate_capabilities(self, value):
        if not isinstance(value, (dict, list)):
            raise serializers.ValidationError("Must be an object or a list of models.")
        return parse_capabilities(value)


class MinerRegisteredSerializer(serializers.Serializer):
    status = serializers.CharField(default="ok")
    session_token = serializers.CharField()
    miner_id = serializers.CharField()


class MinerSerializer(serializers.ModelSerializer):
    models = serializers.SerializerMethodField()

    class Meta:
        model = Miner
        fields = [
            "miner_id",
            "status",
            "draining",
            "gpu_name",
            "vram_gb",
            "cuda_version",
            "region",
            "price",
            "max_concurrent_jobs",
            "models",
            "capabilities",
            "registered_at",
            "last_heartbeat_at",
        ]
        read_only_fields = fields

    def get_models(self, miner) -> list[str]:
        return sorted(m.name for m in miner.served_models.all())

"""What a miner can run, normalised from the shapes existing miners send."""

import re
from dataclasses import dataclass, field
from decimal import Decimal

# The model name agents' tasks queue under (``jobs.models.JobType.TASK``): only agents serve it, so
# a miner may not claim to.
AGENT_TASK_MODEL = "agent-task"

_VERSION = re.compile(r"^\s*(\d{1,4})(?:\.(\d{1,3}))?")


def cuda_code(version) -> int | None:
    """``"12.1"`` → 12001, so versions compare as integers in SQL. None when absent or unreadable."""
    if version is None or version == "":
        return None
    match = _VERSION.match(str(version))
    if not match:
        return None
    return int(match.group(1)) * 1000 + int(match.group(2) or 0)


@dataclass(frozen=True)
class Capabilities:
    models: tuple[str, ...] = ()
    gpu_name: str = ""
    vram_gb: float = 0.0
    cuda_version: str = ""
    region: str = ""
    price: Decimal | None = None
    max_concurrent_jobs: int = 1
    supported_tasks: tuple[str, ...] = ()
    raw: dict = field(default_factory=dict)

from django import forms
from django.conf import settings

from catalog import payloads
from catalog.models import CatalogModel, ModelTask

PROMPT_MAX_LENGTH = 20_000


class JobSubmitForm(forms.Form):
    """A job for a model of the catalog: a prompt to complete, or a text to embed."""

    model = forms.ChoiceField()
    prompt = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 5}),
        max_length=PROMPT_MAX_LENGTH,
        strip=False,
        help_text="The prompt to complete, or the text to embed for an embedding model.",
    )
    max_tokens = forms.IntegerField(min_value=1, required=False, help_text="Leave empty for the model's default.")
    # No initial value: a job that leaves it out runs with the model's default parameters (the
    # shipped SmolLM2 answers greedily), as an API job does.
    temperature = forms.FloatField(
        min_value=0,
        max_value=payloads.MAX_TEMPERATURE,
        required=False,
        help_text="Leave empty for the model's default; 0 is greedy and deterministic.",
    )

    def __init__(self, *args, catalog: list[CatalogModel], **kwargs):
        super().__init__(*args, **kwargs)
        self.catalog = {entry.name: entry for entry in catalog}
        self.fields["model"].choices = [(entry.name, _model_label(entry)) for entry in catalog]
        default = _default_model(catalog)
        if default is not None:
            self.fields["model"].initial = default.name

    def clean(self):
        cleaned = super().clean()
        entry = self.catalog.get(cleaned.get("model"))
        if entry is None or self.errors:
            return cleaned
        # The same rules as the API's, with the model's own token limit.
        try:
            payloads.check_payload(
                self._payload(entry), max_input_chars=settings.JOB_MAX_INPUT_CHARS, max_tokens=entry.max_tokens
            )
        except payloads.PayloadError as error:
            self.add_error(error.field if error.field in self.fields else "prompt", error.message)
        return cleaned

    def submission(self) -> dict:
        """The keyword arguments of ``jobs.services.job_submit`` for this form (client aside)."""
        entry = self.catalog[self.cleaned_data["model"]]
        payload = self._payload(entry)
        return {"model": entry.name, "job_type": payload["type"], "payload": payload}

    def _payload(self, entry: CatalogModel) -> dict:
        if not entry.generates_text:
            return {"type": "embedding", "model": entry.name, "input": self.cleaned_data["prompt"]}
        params = {}
        if self.cleaned_data.get("max_tokens") is not None:
            params["max_tokens"] = self.cleaned_data["max_tokens"]
        if self.cleaned_data.get("temperature") is not None:
            params["temperature"] = self.cleaned_data["temperature"]
        return {"type": "inference", "model": entry.name, "prompt": self.cleaned_data["prompt"], "params": params}


def _model_label(entry: CatalogModel) -> str:
    """``name — task, N miners online``: flat, so that no parentheses nest in the list."""
    miners = f"{entry.online_miners} miner{'' if entry.online_miners == 1 else 's'} online"
    return f"{entry.name} — {entry.get_task_display().lower()}, {miners}"


def _default_model(catalog: list[CatalogModel]) -> CatalogModel | None:
    """What a person most likely wants to try: a model someone serves now, a chat model before a
    text-generation one, never an embedding model unless there is nothing else."""
    generating = [entry for entry in catalog if entry.generates_text]
    if not generating:
        return None
    return max(generating, key=lambda entry: (entry.online_miners > 0, entry.task == ModelTask.CHAT))

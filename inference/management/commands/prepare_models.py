import time

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from catalog.selectors import catalog_entry


class Command(BaseCommand):
    help = (
        "Load the named catalog models once (default: INFERENCE_MODELS), converting GGUF weights "
        "into the model cache, so that workers start serving them in about a second."
    )

    def add_arguments(self, parser):
        parser.add_argument("models", nargs="*", help="Catalog names (default: INFERENCE_MODELS).")

    def handle(self, *args, **options):
        from inference import engine

        names = options["models"] or settings.INFERENCE_MODELS
        for name in names:
            entry = catalog_entry(name)
            if entry is None:
                raise CommandError(f"{name!r} is not in the model catalog.")
            started = time.perf_counter()
            try:
                engine.load(engine.ModelSpec.from_catalog(entry), cache_dir=settings.MODEL_CACHE_DIR)
            except engine.InferenceError as error:
                raise CommandError(f"{name}: {error.message}") from None
            self.stdout.write(f"{name}: ready in {time.perf_counter() - started:.1f} s")

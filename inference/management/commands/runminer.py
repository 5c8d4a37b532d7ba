import logging
import os
import signal
import socket
import threading
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from inference.agent import AgentError, MinerAgent


class Command(BaseCommand):
    help = (
        "Join a coordinator as a GPU miner over HTTP: load the named catalog models, register, "
        "long-poll for jobs, run them and post the results. SIGTERM stops polling, finishes the running "
        "jobs (within --grace seconds, else hands them back), deregisters the miner and exits."
    )

    def add_arguments(self, parser):
        parser.add_argument("--url", default=os.environ.get("AITBC_URL", "http://127.0.0.1:8000"))
        parser.add_argument("--api-key", default=os.environ.get("AITBC_API_KEY", ""), help="A miner-scope key.")
        parser.add_argument(
            "--models", required=True, help="Comma-separated catalog names, e.g. smollm2-135m,minilm-l6"
        )
        parser.add_argument("--miner-id", default=socket.gethostname())
        parser.add_argument(
            "--batch-size",
            type=int,
            default=settings.INFERENCE_BATCH_SIZE,
            help="Most jobs run at once, decoding as one continuous batch (default: INFERENCE_BATCH_SIZE).",
        )
        parser.add_argument("--poll-wait", type=float, default=15, help="Long-poll seconds.")
        parser.add_argument("--heartbeat", type=float, default=20, help="Seconds between heartbeats.")
        parser.add_argument(
            "--device", default=settings.INFERENCE_DEVICE or None, help="cuda, cpu… (default: CUDA if present)"
        )
        parser.add_argument("--threads", type=int, default=0, help="CPU inference threads (default: one per core).")
        parser.add_argument("--cache-dir", default=str(settings.MODEL_CACHE_DIR))
        parser.add_argument("--region", default="")
        parser.add_argument("--price", default=None, help="Price per job unit you ask (AITBC).")
        parser.add_argument("--grace", type=float, default=30, help="Seconds a SIGTERM waits for the running jobs.")
        parser.add_argument("--max-jobs", type=int, default=None, help="Exit after answering this many jobs.")
        parser.add_argument(
            "--no-stream",
            action="store_true",
            help="Send each job's text with its result only, not as it is decoded.",
        )
        parser.add_argument(
            "--tokens-over",
            choices=("auto", "http"),
            default="auto",
            help="How decoded text is streamed: auto (the default) over a ws/miners/ socket where the coordinator "
            "offers one, else POST /v1/miners/tokens; http always posts.",
        )

    def handle(self, *args, **options):
        if not options["api_key"]:
            raise CommandError("A miner API key is required (--api-key or AITBC_API_KEY).")
        if options["batch_size"] < 1:
            raise CommandError("--batch-size must be at least 1.")
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        # One line per job, not one per request: httpx logs every poll, heartbeat and streamed batch at INFO.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        agent = MinerAgent(
            url=options["url"],
            api_key=options["api_key"],
            models=[name.strip() for name in options["models"].split(",") if name.strip()],
            miner_id=options["miner_id"],
            batch_size=options["batch_size"],
            poll_wait=options["poll_wait"],
            heartbeat_seconds=options["heartbeat"],
            cache_dir=options["cache_dir"] and Path(options["cache_dir"]),
            device=options["device"],
            region=options["region"],
            price=options["price"],
            max_jobs=options["max_jobs"],
            threads=options["threads"],
            stream_tokens=not options["no_stream"],
            tokens_over=options["tokens_over"],
        )

        def shut_down(signum, frame):
            if agent.stopping:  # a second signal: don't wait any longer
                agent.abort()
                return
            self.stderr.write(f"stopping: finishing the running jobs (up to {options['grace']:g} s)")
            agent.stop()
            timer = threading.Timer(options["grace"], agent.abort)
            timer.daemon = True
            timer.start()

        signal.signal(signal.SIGTERM, shut_down)
        signal.signal(signal.SIGINT, shut_down)
        try:
            done = agent.run()
        except AgentError as error:
            raise CommandError(str(error)) from None
        self.stdout.write(f"stopped after answering {done} job{'' if done == 1 else 's'}")

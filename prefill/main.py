"""``tandem serve prefill`` (``python -m prefill.main``): flags and process life in ``worker.cli``."""

from prefill.worker import PrefillWorker
from worker.cli import role_main

main = role_main(PrefillWorker, __name__)

"""``tandem serve decode`` (``python -m decode.main``): flags and process life in ``worker.cli``."""

from decode.worker import DecodeWorker
from worker.cli import role_main

main = role_main(DecodeWorker, __name__)

"""``tandem serve colocated`` (``python -m colocated.main``): flags and process life in ``worker.cli``."""

from colocated.worker import ColocatedWorker
from worker.cli import role_main

main = role_main(ColocatedWorker, __name__)

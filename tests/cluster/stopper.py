"""A stand-in child for ``LocalCluster.stop`` tests: ``python -m tests.cluster.stopper LOG NAME MODE``.

It appends ``NAME ready`` to LOG once its SIGTERM handler is in place, then ``NAME term`` on each
SIGTERM. MODE ``drain`` exits 0 shortly after the first SIGTERM (a quick drain), ``slow`` only on
a second one (a drain that would take long), ``stubborn`` never (it must be killed).
"""

from __future__ import annotations

import signal
import sys
import threading


def main(log_path: str, name: str, mode: str) -> int:
    terms: list[int] = []
    done = threading.Event()

    def write(what: str) -> None:
        with open(log_path, "a") as f:
            f.write(f"{name} {what}\n")

    def on_term(*_: object) -> None:
        terms.append(1)
        write("term")
        if (mode == "drain") or (mode == "slow" and len(terms) >= 2):
            done.set()

    signal.signal(signal.SIGTERM, on_term)
    write("ready")
    while not done.wait(0.05):
        pass
    write("exit")
    return 0


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:4]))

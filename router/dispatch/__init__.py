"""Dispatch: getting a routed request to its workers and its tokens back, and every way a worker
can fail it.

- ``cluster``: the live workers (registry) and the cached prefix of a prompt on each (store index).
- ``dispatcher``: the inbox thread that hands worker events to open requests, one outbox per
  worker, aborts (deferred for a missing worker), lost-worker detection.
- ``generation``: one attempt of a request: send the task, turn events into text deltas, abort on
  close.
- ``failures``: what each failure means (status, blamed worker), suspects, the retry decision,
  deferred aborts; timings from ``worker.types.MEMBERSHIP``.
"""

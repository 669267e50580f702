"""What every worker process shares: leaf types, the Redis registry, the control loop and heartbeat,
the base worker, store write-back and the worker CLI plumbing. ``prefill/``, ``decode/`` and
``colocated/`` hold only what makes each role different."""

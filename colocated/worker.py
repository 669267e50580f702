"""The colocated worker: prompts in, tokens streamed, prefill and decode in one engine.

It takes ``GenerateTask``s with no decode worker named, prefills them beside its running decodes
(continuous batching with chunked prefill) and streams every token itself; its first event carries
the prompt's hits in its local prefix cache. It uses no KV store: the non-disaggregated baseline
disaggregation is measured against.
"""

from __future__ import annotations

from transfer.messages import BAD_REQUEST, AbortTask, GenerateTask
from worker.base import choice_params, task_ids
from worker.streaming import StreamingWorker


class ColocatedWorker(StreamingWorker, role="colocated"):
    """Run a colocated worker: prompts in, tokens streamed to the router, prefill and decode in
    one engine with its local prefix cache (the non-disaggregated baseline)."""

    def __init__(self, engine, info, store=None) -> None:
        if store is not None:
            raise ValueError("a colocated worker uses no KV store (its prefix cache is local)")
        super().__init__(engine, info)

    def handlers(self):
        return {GenerateTask: self._admit, AbortTask: self.abort}

    def _admit(self, task: GenerateTask) -> None:
        if task.decode_address is not None:
            text = (
                f"a colocated worker decodes its prompts itself; it cannot hand off to {task.decode_address}"
            )
            for request_id in task_ids(task):
                self.fail(task.reply_to, request_id, BAD_REQUEST, text)
            return
        try:
            params, siblings = choice_params(task)
            self.engine.add_request(
                list(task.token_ids), params, request_id=task.request_id, siblings=siblings
            )
        except (TypeError, ValueError) as e:
            for request_id in task_ids(task):
                self.fail(task.reply_to, request_id, BAD_REQUEST, str(e))
            return
        self.open_stream(task.request_id, task.reply_to, report_hits=True)
        for request_id in task.choice_ids:  # the prompt's other choices: prefilled by the first's work
            self.open_stream(request_id, task.reply_to, report_hits=False)

"""Continuous batching: one thread decodes every causal generation its callers submit, together.

Callers (the server's request handlers, the MCP tools) ``submit`` a prompt from any thread and
wait for its ``Job`` or follow it byte by byte. The engine's thread runs one ``CausalBatch``: a
job joins at the next byte step, at most ``max_batch`` decode at once (the rest wait in order),
and a job leaves the moment it reaches its stop string, budget or deadline (or its caller
cancels it), so a short request never waits for a long one to finish. Each sequence draws from
its own generator, so its text is what decoding it alone gives (``generation/causal.py``).

``Engine.sample`` has ``sample``'s signature, so the safety gate's re-sampling
(``safe_sample_with_retry(draw=engine.sample)``) and ``generate_text`` use the engine without
knowing it; what a causal batch cannot take (a diffusion model or mode, a fallback model) is
sampled directly in the caller's thread.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from bitlm.core.errors import BitLMError
from bitlm.generation.causal import CausalBatch, Continuation
from bitlm.generation.diffusion import Sample
from bitlm.generation.options import GenerationOptions
from bitlm.generation.sample import sample, sampling_mode
from bitlm.model import BitModel

log = logging.getLogger(__name__)

Progress = Callable[[bytes, bool], None]
"""Called from the engine's thread with a job's settled output so far and whether it is done."""


class Cancelled(Exception):
    """A job its caller cancelled (a client that went away)."""


class Job:
    """One submitted generation: wait for it with ``result``, follow it with ``on_progress``
    (``submit``), stop it with ``cancel``."""

    def __init__(self, prompt: bytes, max_new_bytes: int, options: GenerationOptions):
        self.prompt, self.max_new_bytes, self.options = prompt, max_new_bytes, options
        self.on_progress: Progress | None = None
        self.continuation: Continuation | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self._finished = threading.Event()

    @property
    def done(self) -> bool:
        return self._finished.is_set()

    def cancel(self) -> None:
        """Ask the engine to drop this job at its next step."""
        self.cancelled = True

    def result(self, timeout: float | None = None) -> Sample:
        """The finished sample; raises the job's error (``TimeLimitExceeded`` past its deadline,
        ``Cancelled``, or what decoding raised)."""
        if not self._finished.wait(timeout):
            raise TimeoutError("the generation has not finished")
        if self.error is not None:
            raise self.error
        return Sample(self.continuation.bits(), 0)

    @property
    def finish_reason(self) -> str:
        """``stop`` (its stop string), ``length`` (its byte budget) or ``error``."""
        if self.error is not None or self.continuation is None:
            return "error"
        return "stop" if self.continuation.stopped else "length"

    def _report(self) -> None:
        if self.on_progress is not None and self.continuation is not None:
            self.on_progress(self.continuation.settled(), self.continuation.done)

    def _finish(self, error: BaseException | None = None) -> None:
        self.error = error or (self.continuation.error if self.continuation else None)
        if self.error is None:
            self._report()
        elif self.on_progress is not None:
            self.on_progress(b"", True)
        self._finished.set()


class Engine:
    """The running batch of one causal model and the thread that decodes it (module
    docstring). The thread starts with the first job and ends with ``close``."""

    def __init__(self, model: BitModel, max_batch: int = 16) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.model, self.max_batch = model.eval(), max_batch
        self.batch = CausalBatch(model)
        self.waiting: deque[Job] = deque()
        self.running: dict[Continuation, Job] = {}
        self.wake = threading.Condition()
        self.closed = False
        self.thread: threading.Thread | None = None
        self.steps = 0  # byte steps run, for the status route and benchmarks

    def __len__(self) -> int:
        """Jobs decoding or waiting."""
        with self.wake:
            return len(self.running) + len(self.waiting)

    def sample(
        self,
        model: BitModel,
        prompt: bytes,
        max_new_bytes: int,
        options: GenerationOptions | None = None,
    ) -> Sample:
        """``bitlm.generation.sample.sample`` through the running batch when it can take the
        request (this engine's model, causal, no suffix), else directly."""
        options = options or GenerationOptions()
        batched = model is self.model and not options.suffix and options.kv_cache
        if not batched or sampling_mode(model, options.mode) != "causal":
            return sample(model, prompt, max_new_bytes, options)
        return self.submit(prompt, max_new_bytes, options).result()

    def submit(
        self,
        prompt: bytes,
        max_new_bytes: int,
        options: GenerationOptions,
        on_progress: Progress | None = None,
    ) -> Job:
        """Queue a causal generation; it joins the batch at the next step there is room."""
        if options.suffix:
            raise BitLMError("infilling (a suffix) needs a diffusion model and mode=diffusion")
        job = Job(prompt, max_new_bytes, options)
        job.on_progress = on_progress
        with self.wake:
            if self.closed:
                raise RuntimeError("the generation engine is closed")
            self.waiting.append(job)
            if self.thread is None:
                self.thread = threading.Thread(target=self._run, name="bitlm-engine", daemon=True)
                self.thread.start()
            self.wake.notify()
        return job

    def close(self) -> None:
        """Stop the thread; jobs still waiting or running end with ``Cancelled``."""
        with self.wake:
            self.closed = True
            self.wake.notify()
        if self.thread is not None:
            self.thread.join()

    def _run(self) -> None:
        while self._admit():
            try:
                finished = self.batch.step()
            except Exception as err:  # a bug must not hang every caller: fail them, go on
                log.exception("generation step failed")
                self._fail_running(err)
                continue
            self.steps += 1
            for continuation in finished:
                self.running.pop(continuation)._finish()
            for job in self.running.values():
                job._report()
        self._fail_running(Cancelled("the server is shutting down"))
        for job in self.waiting:
            job._finish(Cancelled("the server is shutting down"))

    def _admit(self) -> bool:
        """Wait for work; move waiting jobs into the batch while there is room and drop
        cancelled ones. False once closed."""
        with self.wake:
            while not self.closed and not self.waiting and not self.running:
                self.wake.wait()
            if self.closed:
                return False
            joining = []
            while self.waiting and len(self.running) + len(joining) < self.max_batch:
                joining.append(self.waiting.popleft())
        for job in joining:
            self._join(job)
        for job in self.running.values():
            if job.cancelled:
                job.continuation.error = Cancelled("cancelled")
                job.continuation.done = True
        return True

    def _join(self, job: Job) -> None:
        """Prefill ``job`` into the batch (a job asking for nothing is done at once)."""
        try:
            continuation = self.batch.add(job.prompt, job.max_new_bytes, job.options)
        except Exception as err:
            job._finish(err)
            return
        job.continuation = continuation
        if continuation.done:
            job._finish()
        else:
            self.running[continuation] = job

    def _fail_running(self, err: BaseException) -> None:
        for job in self.running.values():
            job._finish(err)
        self.running.clear()
        self.batch = CausalBatch(self.model)

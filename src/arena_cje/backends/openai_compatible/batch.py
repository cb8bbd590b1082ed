"""The batch engine of the OpenAI-compatible backend: many items on a thread pool, each recorded
in the request store as it finishes, within the budget.

An item already done in the store is not sent again. Each item reserves its pre-request cost
estimate before it starts and settles the actual cost when it ends. A fault of one item (retries
exhausted, a malformed reply, an item-specific rejection) becomes that item's failure result; a
:class:`~.errors.ConfigurationError` or :class:`~.errors.BudgetExceededError` stops the batch:
queued items are cancelled, the ones in flight finish and are recorded, then the error is raised.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from tqdm.auto import tqdm

from arena_cje.backends.openai_compatible.access import _Budget
from arena_cje.backends.openai_compatible.errors import (
    _RETRYABLE,
    BudgetExceededError,
    ConfigurationError,
    MalformedResponseError,
    _ItemRejected,
    _Stopped,
)
from arena_cje.backends.store import DONE, FAILED, RecordKey, RequestStore


@dataclass
class Call:
    """The outcome of one logical item (possibly several HTTP calls)."""

    result: Any
    status: str = DONE
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0


@dataclass
class BatchRunner:
    """Runs items concurrently for one backend.

    Attributes:
        store: The durable request record (``None``: nothing recorded or reused).
        budget: The spend cap shared by all items.
        scrub: Removes the API key from a message.
        concurrency: Items in flight at once, across every batch of the backend: nodes that
            Kedro's ThreadRunner runs side by side (teacher forcing, judging, the echo check) share
            it rather than each sending ``concurrency`` of their own.
        max_retries: Retries the request layer makes (quoted in "gave up after" messages).
        progress: Show a tqdm progress bar.
    """

    store: RequestStore | None
    budget: _Budget
    scrub: Callable[[str], str]
    concurrency: int
    max_retries: int
    progress: bool

    def __post_init__(self) -> None:
        self._slots = threading.BoundedSemaphore(self.concurrency)

    def run(
        self,
        stage: str,
        label: str,
        keys: list[RecordKey],
        tasks: list[Callable[[], Call]],
        estimates: list[tuple[str, float]],
        failure: Callable[[str], Any],
        use_store: bool = True,
    ) -> list[Any]:
        """Run tasks concurrently; record each as it finishes; return results in input order.

        Args:
            stage: Stage name for the progress bar (``generate``, ``judge``, ...).
            label: The record's label (policy name) and the progress bar's.
            keys: The store key of each item.
            tasks: One callable per item, sending its requests.
            estimates: ``(model, usd)`` pre-request cost estimate of each item.
            failure: Builds an item's failed result from an error message.
            use_store: Reuse and record results in the store.

        Raises:
            ConfigurationError: a request was rejected for a reason retrying cannot fix.
            BudgetExceededError: the next item could exceed the budget cap.
        """
        n = len(tasks)
        results: list[Any] = [None] * n
        store = self.store if use_store else None
        if store is not None:
            done = store.get_done(keys)
            for i, key in enumerate(keys):
                if key in done:
                    results[i] = done[key]
        todo = [i for i in range(n) if results[i] is None]
        fatal: BaseException | None = None

        stop = threading.Event()

        def work(i: int) -> Any:
            with self._slots:
                return item(i)

        def item(i: int) -> Any:
            if stop.is_set():
                raise _Stopped()
            _, estimate = estimates[i]
            try:
                self.budget.reserve(estimate)
            except BudgetExceededError:
                stop.set()
                raise
            actual = 0.0
            try:
                try:
                    call = tasks[i]()
                except _ItemRejected as exc:
                    call = Call(failure(str(exc)), status=DONE)
                except MalformedResponseError as exc:
                    call = Call(failure(self.scrub(str(exc))), status=FAILED)
                except _RETRYABLE as exc:
                    message = self.scrub(f"gave up after {self.max_retries + 1} attempts: {type(exc).__name__}: {exc}")
                    call = Call(failure(message), status=FAILED)
                except ConfigurationError:
                    stop.set()  # workers take no new item; in-flight ones finish and are recorded
                    raise
                actual = call.cost_usd
                if store is not None:
                    store.put(
                        keys[i], label, call.result, status=call.status, error=getattr(call.result, "error", None),
                        prompt_tokens=call.prompt_tokens, completion_tokens=call.completion_tokens,
                        cost_usd=call.cost_usd,
                    )
                return call.result
            finally:
                self.budget.settle(estimate, actual)

        with tqdm(
            total=n, initial=n - len(todo), desc=f"{stage} {label}", unit="req", disable=not self.progress,
            dynamic_ncols=True,
        ) as bar, ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="api") as pool:
            futures = {pool.submit(work, i): i for i in todo}
            for future in as_completed(futures):
                i = futures[future]
                if future.cancelled():
                    continue
                try:
                    results[i] = future.result()
                except _Stopped:
                    continue
                except (ConfigurationError, BudgetExceededError) as exc:
                    if fatal is None:
                        fatal = exc
                        for other in futures:
                            other.cancel()  # queued items stop; in-flight ones finish and are recorded
                except Exception as exc:  # noqa: BLE001 - one item's bug never loses the others
                    results[i] = failure(self.scrub(f"{type(exc).__name__}: {exc}"))
                bar.update(1)
        if fatal is not None:
            raise fatal
        return results

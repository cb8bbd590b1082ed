"""Backends live for one run: shared by its nodes, closed when it ends or fails, never cached."""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytest

from arena_cje import backends as backend_registry
from arena_cje.backends.simulated import SimulatedBackend
from arena_cje.experiment import BackendRegistry, MissingCredentialsError, active_registry, backend_from_params
from arena_cje.hooks import BackendParamsHook

from .conftest import copy_project

#: Every ClosingSimulated built in the current test, in order.
BUILT: list[ClosingSimulated] = []


class ClosingSimulated(SimulatedBackend):
    """The simulated backend plus a ``close`` that counts its calls (and an optional failure)."""

    fail_generation = False

    @functools.wraps(SimulatedBackend.__init__)  # keeps the signature that check_options reads
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.closed = 0
        BUILT.append(self)

    def close(self) -> None:
        self.closed += 1

    def generate_batch(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail_generation:
            raise RuntimeError("generation failed on purpose")
        return super().generate_batch(*args, **kwargs)


class _FailingClose:
    def close(self) -> None:
        raise OSError("disk gone")


@pytest.fixture
def closing_simulated(monkeypatch):
    """``backend.name: simulated`` builds a ClosingSimulated."""
    BUILT.clear()
    monkeypatch.setitem(backend_registry.BACKENDS, "simulated", f"{__name__}:ClosingSimulated")
    monkeypatch.setattr(ClosingSimulated, "fail_generation", False)
    yield BUILT
    BUILT.clear()


def _block(seed: int = 0) -> dict[str, Any]:
    return {"name": "simulated", "simulated": {"seed": seed}}


def test_registry_shares_one_backend_per_configuration_and_closes_them_all(closing_simulated):
    with BackendRegistry() as registry:
        assert active_registry() is registry
        first = backend_from_params(_block(seed=1))
        assert backend_from_params(_block(seed=1)) is first
        other = backend_from_params(_block(seed=2))
        assert other is not first and len(registry) == 2
    assert active_registry() is None and len(registry) == 0
    assert [b.closed for b in closing_simulated] == [1, 1]


def test_outside_a_run_every_call_builds_its_own_backend(closing_simulated):
    assert active_registry() is None
    a, b = backend_from_params(_block()), backend_from_params(_block())
    assert a is not b  # no module-level cache keeps either alive


def test_a_backend_that_fails_to_close_is_logged_and_the_others_still_close(closing_simulated, caplog, monkeypatch):
    registry = BackendRegistry().activate()
    healthy = registry.get(_block())
    monkeypatch.setitem(registry._backends, "broken", _FailingClose())
    with caplog.at_level(logging.ERROR, logger="arena_cje.experiment"):
        registry.close_all()  # does not raise: it runs while a failed run's error is propagating
    assert healthy.closed == 1 and active_registry() is None
    assert "_FailingClose" in caplog.text and "disk gone" in caplog.text


def test_no_registry_is_left_open_when_the_backend_cannot_be_configured(tmp_path, monkeypatch):
    """before_pipeline_run raises on a missing key before it opens the run's registry."""
    monkeypatch.delenv("ARENA_TEST_NO_SUCH_KEY", raising=False)

    class _Pipeline:
        def inputs(self) -> set[str]:
            return {BackendParamsHook.INPUT}

    class _Catalog:
        def load(self, name: str) -> dict[str, Any]:
            return {"name": "openai_compatible",
                    "openai_compatible": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "ARENA_TEST_NO_SUCH_KEY"}}

    hook = BackendParamsHook()
    with pytest.raises(MissingCredentialsError, match="ARENA_TEST_NO_SUCH_KEY"):
        hook.before_pipeline_run(_Pipeline(), _Catalog())
    assert active_registry() is None


RUN_PARAMS = {"prompts": {"output_samples": 12, "pool_size": 40},
              "backend": {"simulated": {"truth_min_total_draws": 2000}}}


def _run(project: Any, **kwargs: Any) -> None:
    from kedro.framework.session import KedroSession

    with KedroSession.create(project_path=project, runtime_params=RUN_PARAMS) as session:
        session.run(pipeline_names=["data_prep", "generation"], **kwargs)


def test_each_kedro_run_opens_and_closes_its_own_backend(tmp_path, closing_simulated):
    """Two sessions in one process: one backend per run, shared by its nodes, closed at its end."""
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path)
    bootstrap_project(project)
    _run(project)
    assert len(closing_simulated) == 1, "the nodes of one run share one backend"
    first = closing_simulated[0]
    assert first.closed == 1 and active_registry() is None
    _run(project)
    assert len(closing_simulated) == 2 and closing_simulated[1] is not first, "a new run builds its own"
    assert [b.closed for b in closing_simulated] == [1, 1]
    assert active_registry() is None


def test_a_failed_kedro_run_closes_its_backend(tmp_path, closing_simulated, monkeypatch):
    from kedro.framework.startup import bootstrap_project

    project = copy_project(tmp_path)
    bootstrap_project(project)
    monkeypatch.setattr(ClosingSimulated, "fail_generation", True)
    with pytest.raises(RuntimeError, match="generation failed on purpose"):
        _run(project)
    assert len(closing_simulated) == 1 and closing_simulated[0].closed == 1
    assert active_registry() is None

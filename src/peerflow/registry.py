"""The process-wide registry of steps and workflows that peers run by name.

``register_step("my_app::analyze", analyze)`` makes a step runnable by id;
``register_workflow(wf)`` registers a workflow by name and each of its steps by id.
A :class:`~peerflow.peer.server.PeerServer` resolves requests against a registry (the
process-wide one unless given another). A registered workflow is any
:class:`~peerflow.engine.Engine` (a :class:`~peerflow.workflow.Workflow` as a rule), so
this module does not import the workflow module (which imports it). Re-registering an id
with a different step is an error; re-registering the same step is a no-op.
"""

from __future__ import annotations

import threading
from typing import Any, overload

from peerflow.engine import Engine, EngineT
from peerflow.errors import ValidationError
from peerflow.step import StepFn, StepSpec, as_step

__all__ = [
    "Registry",
    "default_registry",
    "register_step",
    "register_workflow",
    "servable",
]


class Registry:
    """Steps by id and workflows by name. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._steps: dict[str, StepSpec] = {}
        self._workflows: dict[str, Engine] = {}

    def register_step(self, step_id: str, fn_or_step: StepSpec | StepFn) -> StepSpec:
        """Register a step under ``step_id`` and return the registered spec.

        Raises:
            ValidationError: a bad id or function, or the id is taken by another step.
        """
        spec = as_step(fn_or_step)
        if spec.name != step_id:
            spec = spec.with_name(step_id)
        with self._lock:
            self._add_step(spec)
        return spec

    @overload
    def register_workflow(self, workflow: EngineT, *, name: str | None = None) -> EngineT: ...

    @overload
    def register_workflow(self, workflow: Any, *, name: str | None = None) -> Engine: ...

    def register_workflow(self, workflow: Any, *, name: str | None = None) -> Engine:
        """Register ``workflow`` by name and each of its steps by id.

        ``workflow`` is an :class:`~peerflow.engine.Engine` (a peerflow ``Workflow``), or a
        llama-index ``Workflow`` instance: it is served unchanged, wrapped in a
        :class:`~peerflow.llama.LlamaEngine` named ``name`` (default: its explicit
        ``workflow_name``, else its class name), which is what this returns.

        Raises:
            ValidationError: not a workflow, ``name=`` that is not the Engine's own name,
                or the name or a step id is taken by something else.
        """
        if _is_llama_workflow(workflow):
            from peerflow.llama import LlamaEngine

            workflow = LlamaEngine(workflow, name=name)
        elif name is not None and getattr(workflow, "name", None) != name:
            raise ValidationError(
                f"register_workflow(name={name!r}): a peerflow Workflow is named when it is "
                f"built (Workflow(name=...)); this one is {getattr(workflow, 'name', None)!r}"
            )
        if not isinstance(workflow, Engine):
            raise ValidationError(f"register_workflow takes a Workflow, got {workflow!r}")
        with self._lock:
            existing = self._workflows.get(workflow.name)
            if existing is not None and existing is not workflow:
                if not existing.same_workflow(workflow):
                    raise ValidationError(
                        f"workflow `{workflow.name}` is already registered with other steps"
                    )
                return existing  # an equal workflow
            for spec in workflow.steps:
                taken = self._steps.get(spec.id)
                if taken is not None and not taken.same_step(spec):
                    raise ValidationError(
                        f"step id `{spec.id}` of workflow `{workflow.name}` is already "
                        f"registered for {taken.fn!r}"
                    )
            for spec in workflow.steps:
                self._steps.setdefault(spec.id, spec)
            self._workflows[workflow.name] = workflow
        return workflow

    def _add_step(self, spec: StepSpec) -> None:
        taken = self._steps.get(spec.id)
        if taken is not None:
            if taken.same_step(spec):
                return
            raise ValidationError(
                f"step id `{spec.id}` is already registered for {taken.fn!r}; choose another id"
            )
        self._steps[spec.id] = spec

    def step(self, step_id: str) -> StepSpec | None:
        """The step registered under ``step_id``, or None."""
        return self._steps.get(step_id)

    def workflow(self, name: str) -> Engine | None:
        """The workflow registered under ``name``, or None."""
        return self._workflows.get(name)

    def step_ids(self) -> list[str]:
        """Every registered step id, sorted."""
        with self._lock:
            return sorted(self._steps)

    def workflows(self) -> dict[str, tuple[str, ...]]:
        """Registered workflow names and their step ids, sorted by name."""
        with self._lock:
            return {name: wf.step_ids for name, wf in sorted(self._workflows.items())}

    def unregister(self, *, step_id: str | None = None, workflow: str | None = None) -> None:
        """Remove a step id and/or a workflow name (for tests and hot reload)."""
        with self._lock:
            if step_id is not None:
                self._steps.pop(step_id, None)
            if workflow is not None:
                self._workflows.pop(workflow, None)


_DEFAULT = Registry()


def default_registry() -> Registry:
    """The process-wide registry."""
    return _DEFAULT


def register_step(step_id: str, fn_or_step: StepSpec | StepFn) -> StepSpec:
    """Register a step in the process-wide registry (see :meth:`Registry.register_step`).

    Raises:
        ValidationError: a bad id or function, or the id is taken by another step.
    """
    return _DEFAULT.register_step(step_id, fn_or_step)


@overload
def register_workflow(workflow: EngineT, *, name: str | None = None) -> EngineT: ...


@overload
def register_workflow(workflow: Any, *, name: str | None = None) -> Engine: ...


def register_workflow(workflow: Any, *, name: str | None = None) -> Engine:
    """Register a workflow and its steps in the process-wide registry.

    See :meth:`Registry.register_workflow` (a llama-index ``Workflow`` is served unchanged).

    Raises:
        ValidationError: not a workflow, or the name or a step id is taken by something
            else.
    """
    engine: Engine = _DEFAULT.register_workflow(workflow, name=name)
    return engine


def servable(value: object) -> bool:
    """True for what ``register_workflow`` takes: an Engine or a llama-index ``Workflow``."""
    if isinstance(value, type):  # a class is not a workflow, even one shaped like an Engine
        return False
    return isinstance(value, Engine) or _is_llama_workflow(value)


def _is_llama_workflow(value: object) -> bool:
    """True for a llama-index ``Workflow`` instance, without importing llama-index."""
    return any(
        cls.__name__ == "Workflow" and cls.__module__ == "workflows.workflow"
        for cls in type(value).__mro__
    )

"""Write a workhost task handler in Python as one function of plain dicts.

    import workhost

    @workhost.handler
    def execute(name: str, data: dict) -> dict:
        total = workhost.kv.increment("total", data.get("step", 1))
        workhost.log.info(f"total is now {total}")
        return {"total": total}      # or: return workhost.RETRY; or raise workhost.Fail("why")

Input and output values are int (s64), bool, float (finite), str, and lists
of one of those. Returning a dict succeeds with it as output; returning
``workhost.RETRY`` asks to run again after the backoff delay; raising
``workhost.Fail(message)`` fails the task permanently with that message, and
so does any other exception (its message is the type and text).

Build with componentize-py against the world ``task-handler`` (or
``http-task-handler`` to use ``wasi:http``); see the README.
"""

from typing import Any, Callable, Dict, List, Optional, Tuple

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config as _config
from wit_world.imports import context as _context
from wit_world.imports import kv as _kv
from wit_world.imports import log as _log

try:  # the world `task-handler`
    from wit_world.imports import types
except ImportError:  # `http-task-handler`, where wasi:http has a `types` too
    from wit_world.imports import workhost_task_types as types  # type: ignore[no-redef]

__all__ = ["handler", "RETRY", "Fail", "KvError", "kv", "log", "config", "context", "to_data", "from_data"]

RETRY = object()
"""Return this from a handler to ask for a retry after the backoff delay."""


class Fail(Exception):
    """Raise to fail the task permanently with this message."""


class KvError(Exception):
    """A kv call failed; ``.error`` is the WIT ``kv-error`` value."""

    def __init__(self, error: Any):
        super().__init__(f"kv error: {error}")
        self.error = error


def _to_value(key: str, v: Any) -> Any:
    # bool before int: True is an int in Python.
    if isinstance(v, bool):
        return types.Value_Bool(v)
    if isinstance(v, int):
        return types.Value_S64(v)
    if isinstance(v, float):
        return types.Value_F64(v)
    if isinstance(v, str):
        return types.Value_String(v)
    if isinstance(v, (list, tuple)):
        items = list(v)
        if all(isinstance(x, bool) for x in items) and items:
            return types.Value_BoolList(items)
        if all(isinstance(x, int) and not isinstance(x, bool) for x in items) and items:
            return types.Value_S64List(items)
        if all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in items) and items:
            return types.Value_F64List([float(x) for x in items])
        if all(isinstance(x, str) for x in items):
            return types.Value_StringList(items)
        raise Fail(f"data key {key!r}: a list must hold one type: int, bool, float or str")
    raise Fail(f"data key {key!r}: {type(v).__name__} is not a task data type (int, bool, float, str, or a list)")


def to_data(d: Dict[str, Any]) -> List[Tuple[str, Any]]:
    """A dict as WIT task data."""
    return [(k, _to_value(k, v)) for k, v in d.items()]


def from_data(pairs: List[Tuple[str, Any]]) -> Dict[str, Any]:
    """WIT task data as a dict."""
    return {k: v.value for k, v in pairs}


def handler(fn: Callable[[str, Dict[str, Any]], Any]) -> Callable[[str, Dict[str, Any]], Any]:
    """Makes ``fn(name, data) -> dict | RETRY`` the component's handler."""

    class Handler(exports.Handler):
        def execute_task(self, name: str, input_data: List[Tuple[str, Any]]) -> Any:
            try:
                result = fn(name, from_data(input_data))
                if result is RETRY:
                    return types.Outcome_Retry()
                return types.Outcome_Success(to_data(result or {}))
            except Fail as e:
                raise Err(str(e))
            except Err:
                raise
            except Exception as e:  # any other error fails the task, naming it
                raise Err(f"{type(e).__name__}: {e}")

    # componentize-py looks for the export class in the app module.
    import sys

    setattr(sys.modules[fn.__module__], "Handler", Handler)
    return fn


class _Kv:
    """This handler's durable key-value store."""

    def get(self, key: str) -> Optional[bytes]:
        try:
            return _kv.get(key)
        except Err as e:
            raise KvError(e.value)

    def set(self, key: str, value: Any) -> None:
        try:
            _kv.set(key, value.encode() if isinstance(value, str) else bytes(value))
        except Err as e:
            raise KvError(e.value)

    def delete(self, key: str) -> None:
        try:
            _kv.delete(key)
        except Err as e:
            raise KvError(e.value)

    def increment(self, key: str, delta: int = 1) -> int:
        try:
            return _kv.increment(key, delta)
        except Err as e:
            raise KvError(e.value)


class _Log:
    """Leveled lines in the run's log (``print`` goes there too)."""

    def trace(self, message: str) -> None:
        _log.write(_log.Level.TRACE, message)

    def debug(self, message: str) -> None:
        _log.write(_log.Level.DEBUG, message)

    def info(self, message: str) -> None:
        _log.write(_log.Level.INFO, message)

    def warn(self, message: str) -> None:
        _log.write(_log.Level.WARN, message)

    def error(self, message: str) -> None:
        _log.write(_log.Level.ERROR, message)


class _Config:
    """The configuration values and secrets granted to this handler."""

    def get(self, key: str) -> Optional[str]:
        return _config.get(key)

    def keys(self) -> List[str]:
        return _config.keys()


class _Context:
    """Facts about this run, and progress."""

    def task_id(self) -> str:
        return _context.task_id()

    def attempt(self) -> int:
        return _context.run_attempt_count()

    def tags(self) -> List[str]:
        return _context.tags()

    def time_left_ms(self) -> int:
        return _context.time_left_ms()

    def set_progress(self, progress: Dict[str, Any]) -> None:
        try:
            _context.set_progress(to_data(progress))
        except Err as e:
            raise Fail(f"progress refused: {e.value}")


kv = _Kv()
log = _Log()
config = _Config()
context = _Context()

"""Python embedding workhost through ctypes, as docs/embedding.md shows:
opens a real host, enqueues, sees the state changes through the callback,
cancels a running task (the `spin` handler, which loops until stopped), and
shuts down. Usage: host.py <libworkhost_capi.so> <manifest>. Run by
tests/all/capi.rs; prints one line per step and exits 0 when all pass.
"""

import ctypes
import json
import queue
import sys

lib_path, manifest = sys.argv[1], sys.argv[2]
lib = ctypes.CDLL(lib_path)

host_p = ctypes.c_void_p
err_p = ctypes.POINTER(ctypes.c_void_p)  # char **, freed with workhost_string_free
CALLBACK = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_int64, ctypes.c_char_p, ctypes.c_char_p)

lib.workhost_open_path.argtypes = [ctypes.c_char_p, ctypes.POINTER(host_p), err_p]
lib.workhost_enqueue.argtypes = [host_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64), err_p]
lib.workhost_get.argtypes = [host_p, ctypes.c_int64, ctypes.POINTER(ctypes.c_void_p), err_p]
lib.workhost_cancel.argtypes = [host_p, ctypes.c_int64, err_p]
lib.workhost_set_callback.argtypes = [host_p, CALLBACK, ctypes.c_void_p, err_p]
lib.workhost_shutdown.argtypes = [host_p, err_p]
lib.workhost_free.argtypes = [host_p]
lib.workhost_string_free.argtypes = [ctypes.c_void_p]
lib.workhost_string_free.restype = None
lib.workhost_error_message.argtypes = [ctypes.c_int]
lib.workhost_error_message.restype = ctypes.c_char_p


class WorkhostError(Exception):
    pass


def call(fn, *args):
    """Calls fn(*args, &error) and raises with the message on failure."""
    error = ctypes.c_void_p()
    code = fn(*args, ctypes.byref(error))
    if code != 0:
        message = ctypes.string_at(error.value).decode() if error.value else ""
        lib.workhost_string_free(error)
        raise WorkhostError(f"{fn.__name__}: {lib.workhost_error_message(code).decode()}: {message}")


def take_string(p):
    """Copies a string the library handed out, then frees it."""
    try:
        return ctypes.string_at(p.value).decode()
    finally:
        lib.workhost_string_free(p)


# The callback runs on the library's thread: hand each change to the main
# thread through a queue, as a UI would post it to its event loop.
changes = queue.Queue()


@CALLBACK
def on_change(user_data, task_id, state, event):
    changes.put((task_id, state.decode(), event.decode()))


def wait_for(task_id, state):
    while True:
        got = changes.get(timeout=60)
        print("callback:", *got, flush=True)
        if got[0] == task_id and got[1] == state:
            return


host = host_p()
call(lib.workhost_open_path, manifest.encode(), ctypes.byref(host))
call(lib.workhost_set_callback, host, on_change, None)

task_id = ctypes.c_int64()
request = {"handler": "echo", "task": "greet", "input": {"name": "python"}}
call(lib.workhost_enqueue, host, json.dumps(request).encode(), ctypes.byref(task_id))
wait_for(task_id.value, "succeeded")
out = ctypes.c_void_p()
call(lib.workhost_get, host, task_id, ctypes.byref(out))
task = json.loads(take_string(out))
assert task["output"] == {"name": "python"}, task
print("succeeded", flush=True)

spin = ctypes.c_int64()
call(lib.workhost_enqueue, host, b'{"handler": "spin", "task": "forever", "kind": "processing"}', ctypes.byref(spin))
wait_for(spin.value, "running")
print("spin running", flush=True)
call(lib.workhost_cancel, host, spin)
wait_for(spin.value, "cancelled")
call(lib.workhost_get, host, spin, ctypes.byref(out))
task = json.loads(take_string(out))
assert task["state"] == "cancelled", task
print("spin cancelled", flush=True)

call(lib.workhost_shutdown, host)
try:
    call(lib.workhost_enqueue, host, json.dumps(request).encode(), ctypes.byref(task_id))
    raise AssertionError("enqueue after shutdown succeeded")
except WorkhostError as e:
    assert "shut down" in str(e), e
print("shut down", flush=True)
assert lib.workhost_free(host) == 0
print("ok", flush=True)

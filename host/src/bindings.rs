//! Generated bindings of the `workhost:task@0.1.0` `task-handler` world.
//! Private: the rest of the crate converts to and from its own types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task-handler",
    exports: { default: async },
    // kv calls await their backend (the durable one waits for a commit)
    // without holding the runtime's thread.
    imports: {
        "workhost:task/kv.get": async,
        "workhost:task/kv.set": async,
        "workhost:task/kv.delete": async,
        "workhost:task/kv.increment": async,
        // Calls a guest can make in a tight loop yield to the runtime, so a
        // storm of them shares the threads with other runs and the
        // dispatcher instead of holding one until the next epoch tick.
        "workhost:task/context.set-progress": async,
        "workhost:task/log.write": async,
    },
});

pub(crate) use self::workhost::task::types::Outcome;

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
    },
});

pub(crate) use self::workhost::task::types::Outcome;

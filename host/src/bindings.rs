//! Generated bindings of the `workhost:task@0.1.0` `task-handler` world.
//! Private: the rest of the crate converts to and from its own types.

wasmtime::component::bindgen!({
    path: "../wit",
    world: "task-handler",
    exports: { default: async },
});

pub(crate) use self::workhost::task::types::Outcome;

//! The two changes workhost carries in wasmtime 48.0.8
//! (`host/vendor/wasmtime/WORKHOST-PATCH.md`), tested through wasmtime's own
//! API with core modules shaped like the ones that made them worth it:
//!
//! - function references made at instantiation from a per-module table of
//!   code offsets and a per-instance text base, instead of searching for
//!   both each time: a library module writing its functions into a table it
//!   imports, at an offset it imports (as componentize-py's linked modules
//!   do), must call the right function, with its type checked, from every
//!   instance in every store;
//! - a freed pooled memory reset from a page scan of up to 1,024 dirty
//!   regions (upstream: 32, then everything else decommitted): a memory
//!   dirtied in a few, in hundreds and in thousands of scattered places
//!   must come back exactly as its image was, on the slot's next use.

use wasmtime::{Config, Engine, Instance, Linker, Module, Store, Val};

/// Functions in the library module.
const FUNCS: u32 = 600;
/// The table offset the library imports.
const BASE: u32 = 11;

/// The module that defines the table and the base global, and a library
/// module that fills the table with its own functions at the imported base
/// and calls through it; function `i` returns `i * 3 + 1`, and every tenth
/// function takes a parameter (a different type, so a call of the wrong type
/// must trap).
fn modules(engine: &Engine) -> (Module, Module) {
    let env = format!(
        r#"(module
             (table (export "table") {} funcref)
             (global (export "base") i32 (i32.const {BASE})))"#,
        BASE + FUNCS + 5
    );
    let mut lib = String::from(
        r#"(module
             (import "env" "table" (table 0 funcref))
             (import "env" "base" (global $base i32))
             (type $plain (func (result i32)))
             (type $with (func (param i32) (result i32)))
             (func (export "call") (param $i i32) (result i32)
               (call_indirect (type $plain) (i32.add (local.get $i) (global.get $base))))
             (func (export "call_with") (param $i i32) (result i32)
               (call_indirect (type $with) (i32.const 0)
                 (i32.add (local.get $i) (global.get $base))))
             (func (export "ref") (param $i i32) (result funcref)
               (table.get 0 (i32.add (local.get $i) (global.get $base))))
"#,
    );
    for i in 0..FUNCS {
        if i % 10 == 0 {
            lib.push_str(&format!(
                "(func $f{i} (type $with) (i32.add (local.get 0) (i32.const {})))\n",
                i * 3 + 1
            ));
        } else {
            lib.push_str(&format!("(func $f{i} (type $plain) (i32.const {}))\n", i * 3 + 1));
        }
    }
    lib.push_str("(elem (global.get $base) func");
    for i in 0..FUNCS {
        lib.push_str(&format!(" $f{i}"));
    }
    lib.push_str("))");
    (
        Module::new(engine, wat::parse_str(env).unwrap()).unwrap(),
        Module::new(engine, wat::parse_str(lib).unwrap()).unwrap(),
    )
}

fn instantiate(engine: &Engine, env: &Module, lib: &Module) -> (Store<()>, Instance) {
    let mut store = Store::new(engine, ());
    let env = Instance::new(&mut store, env, &[]).unwrap();
    let mut linker = Linker::new(engine);
    linker.instance(&mut store, "env", env).unwrap();
    let lib = linker.instantiate(&mut store, lib).unwrap();
    (store, lib)
}

fn check_calls(store: &mut Store<()>, lib: &Instance) {
    let call = lib.get_typed_func::<i32, i32>(&mut *store, "call").unwrap();
    let call_with = lib.get_typed_func::<i32, i32>(&mut *store, "call_with").unwrap();
    let take_ref = lib.get_func(&mut *store, "ref").unwrap();
    for i in 0..FUNCS {
        let want = i32::try_from(i * 3 + 1).unwrap();
        let index = i32::try_from(i).unwrap();
        if i % 10 == 0 {
            assert_eq!(call_with.call(&mut *store, index).unwrap(), want, "function {i}");
            assert!(
                call.call(&mut *store, index).is_err(),
                "function {i} called with the wrong type"
            );
        } else {
            assert_eq!(call.call(&mut *store, index).unwrap(), want, "function {i}");
            assert!(
                call_with.call(&mut *store, index).is_err(),
                "function {i} called with the wrong type"
            );
        }
        // The same reference, called from the host (the array-call entry).
        let mut out = [Val::I32(0)];
        take_ref.call(&mut *store, &[Val::I32(index)], &mut out).unwrap();
        let func = *out[0].unwrap_funcref().unwrap();
        let mut result = [Val::I32(0)];
        let args: &[Val] = if i % 10 == 0 { &[Val::I32(0)] } else { &[] };
        func.call(&mut *store, args, &mut result).unwrap();
        assert_eq!(result[0].unwrap_i32(), want, "function {i} called from the host");
    }
}

#[test]
fn functions_written_into_an_imported_table_at_an_imported_offset_are_the_right_ones() {
    for pooling in [false, true] {
        let mut config = Config::new();
        if pooling {
            config.allocation_strategy(wasmtime::InstanceAllocationStrategy::pooling());
        }
        let engine = Engine::new(&config).unwrap();
        let (env, lib) = modules(&engine);
        // Several instances in one store, then fresh stores: each instance
        // looks up its own text base once.
        let (mut store, first) = instantiate(&engine, &env, &lib);
        check_calls(&mut store, &first);
        let mut linker = Linker::new(&engine);
        let env2 = Instance::new(&mut store, &env, &[]).unwrap();
        linker.instance(&mut store, "env", env2).unwrap();
        let second = linker.instantiate(&mut store, &lib).unwrap();
        check_calls(&mut store, &second);
        check_calls(&mut store, &first);
        drop(store);
        for _ in 0..3 {
            let (mut store, lib_instance) = instantiate(&engine, &env, &lib);
            check_calls(&mut store, &lib_instance);
        }
    }
}

/// Host pages in the test memory (4 KiB each): 96 wasm pages.
const HOST_PAGES: u32 = 96 * 16;

#[test]
fn a_pooled_memory_dirtied_in_many_places_comes_back_as_its_image() {
    // Every host page starts with its index + 1 (a data segment per page);
    // `dirty(step)` overwrites the first word of every `step`th page, so
    // step 2 leaves 768 separate dirty regions, step 1 one long one, step 97
    // sixteen. `sum` adds the first word of every page.
    let mut wat = format!(
        "(module (memory (export \"memory\") {} {})\n",
        HOST_PAGES / 16,
        HOST_PAGES / 16
    );
    for page in 0..HOST_PAGES {
        let bytes = (page + 1).to_le_bytes();
        let data: String = bytes.iter().map(|b| format!("\\{b:02x}")).collect();
        wat.push_str(&format!("(data (i32.const {}) \"{data}\")\n", page * 4096));
    }
    wat.push_str(&format!(
        r#"(func (export "dirty") (param $step i32) (local $page i32)
             (loop $next
               (i32.store (i32.mul (local.get $page) (i32.const 4096)) (i32.const 0))
               (local.set $page (i32.add (local.get $page) (local.get $step)))
               (br_if $next (i32.lt_u (local.get $page) (i32.const {HOST_PAGES})))))
           (func (export "sum") (result i32) (local $page i32) (local $sum i32)
             (loop $next
               (local.set $sum (i32.add (local.get $sum)
                 (i32.load (i32.mul (local.get $page) (i32.const 4096)))))
               (local.set $page (i32.add (local.get $page) (i32.const 1)))
               (br_if $next (i32.lt_u (local.get $page) (i32.const {HOST_PAGES}))))
             (local.get $sum)))"#
    ));
    let image_sum = i32::try_from(HOST_PAGES * (HOST_PAGES + 1) / 2).unwrap();

    let mut pool = wasmtime::PoolingAllocationConfig::new();
    // One slot, so every instance reuses the memory the last one dirtied;
    // as much may stay resident as the host keeps (4 MiB).
    pool.total_memories(1)
        .total_core_instances(1)
        .max_memory_size(16 << 20)
        .pagemap_scan(wasmtime::Enabled::Auto)
        .linear_memory_keep_resident(4 << 20);
    let mut config = Config::new();
    config.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
    let engine = Engine::new(&config).unwrap();
    let module = Module::new(&engine, wat::parse_str(&wat).unwrap()).unwrap();

    for step in [2, 3, 1, 97, 2, 5, 1024, 2] {
        let mut store = Store::new(&engine, ());
        let instance = Instance::new(&mut store, &module, &[]).unwrap();
        let sum = instance.get_typed_func::<(), i32>(&mut store, "sum").unwrap();
        let dirty = instance.get_typed_func::<i32, ()>(&mut store, "dirty").unwrap();
        assert_eq!(
            sum.call(&mut store, ()).unwrap(),
            image_sum,
            "fresh memory before dirty({step})"
        );
        dirty.call(&mut store, step).unwrap();
        assert_ne!(sum.call(&mut store, ()).unwrap(), image_sum);
    }
    let mut store = Store::new(&engine, ());
    let instance = Instance::new(&mut store, &module, &[]).unwrap();
    let sum = instance.get_typed_func::<(), i32>(&mut store, "sum").unwrap();
    assert_eq!(sum.call(&mut store, ()).unwrap(), image_sum);
}

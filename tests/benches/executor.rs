//! Cost of one run of the `echo` example (instantiate, call, drop) through
//! workhost's executor, next to the bare-wasmtime floor measured in the same
//! process: the same component, on the same engine, from an `InstancePre`
//! with an empty WASI context, called directly.
//!
//! Then the cost of host calls: `counter` (one `kv.increment` on an
//! in-memory backend, one log line) next to `echo`, alternated in the same
//! process.
//!
//! Run: `cargo bench -p workhost-tests --bench executor` (or `just bench`).
//! Prints per-run medians on one thread, runs per second on one thread and
//! on all cores, the ratio workhost / floor, and counter - echo.

use std::time::{Duration, Instant};

use std::sync::Arc;
use wasmtime::component::{Linker, ResourceTable};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use workhost::{Data, EngineConfig, Executor, Handler, Kv, KvLimits, KvStore, MemoryKv, RunRequest};
use workhost_tests::guests;

mod floor {
    wasmtime::component::bindgen!({
        path: "../wit",
        world: "task-handler",
        exports: { default: async },
    });
}

struct FloorState {
    wasi: WasiCtx,
    table: ResourceTable,
}

impl WasiView for FloorState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[derive(Clone)]
struct Floor {
    engine: wasmtime::Engine,
    pre: floor::TaskHandlerPre<FloorState>,
}

impl Floor {
    fn new(engine: &wasmtime::Engine) -> Floor {
        let mut linker = Linker::new(engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker).unwrap();
        let component = wasmtime::component::Component::from_file(engine, guests::ECHO).unwrap();
        let pre = floor::TaskHandlerPre::new(linker.instantiate_pre(&component).unwrap()).unwrap();
        Floor {
            engine: engine.clone(),
            pre,
        }
    }

    async fn run(&self, input: &Vec<(String, floor::workhost::task::types::Value)>) {
        let mut store = wasmtime::Store::new(
            &self.engine,
            FloorState {
                wasi: WasiCtx::builder().build(),
                table: ResourceTable::new(),
            },
        );
        store.set_fuel(u64::MAX).unwrap();
        store.set_epoch_deadline(1 << 40);
        let instance = self.pre.instantiate_async(&mut store).await.unwrap();
        let result = instance
            .workhost_task_handler()
            .call_execute_task(&mut store, "bench", input)
            .await
            .unwrap();
        assert!(result.is_ok());
    }
}

async fn workhost_run(handler: &Handler, input: &Data) {
    let mut request = RunRequest::new("bench");
    request.input = input.clone();
    let outcome = handler.run(request).await;
    assert!(outcome.output().is_some(), "{:?}", outcome.result);
}

async fn counter_run(handler: &Handler, kv: &Kv) {
    let mut request = RunRequest::new("bench");
    request.kv = kv.clone();
    let outcome = handler.run(request).await;
    assert!(outcome.output().is_some(), "{:?}", outcome.result);
}

const BATCH: usize = 2_000;
const ROUNDS: usize = 7;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let executor = Executor::new(EngineConfig::default()).unwrap();
    let handler = executor.load_file(guests::ECHO.as_ref()).unwrap();
    let floor = Floor::new(executor.engine().wasmtime());
    let input = Data::new().with("n", 1i64).with("name", "bench");
    let floor_input = vec![
        ("n".to_string(), floor::workhost::task::types::Value::S64(1)),
        (
            "name".to_string(),
            floor::workhost::task::types::Value::String("bench".into()),
        ),
    ];
    println!(
        "echo, one run = instantiate + execute-task + drop; pooling allocator: {}",
        executor.engine().uses_pooling()
    );

    // One thread.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let (f1, h1) = rt.block_on(alternate(|| floor.run(&floor_input), || workhost_run(&handler, &input)));
    println!(
        "one thread   floor    {:>8.1} us/run  {:>9.0} runs/s",
        us(f1),
        per_sec(f1)
    );
    println!(
        "one thread   workhost {:>8.1} us/run  {:>9.0} runs/s",
        us(h1),
        per_sec(h1)
    );
    println!(
        "one thread   ratio workhost/floor: {:.2}x",
        h1.as_secs_f64() / f1.as_secs_f64()
    );

    // Host calls: counter (one kv increment) against echo, on one thread.
    let counter = executor.load_file(guests::COUNTER.as_ref()).unwrap();
    let backend: Arc<dyn KvStore> = Arc::new(MemoryKv::default());
    let kv = Kv::new(backend, "counter", KvLimits::default());
    let (e1, c1) = rt.block_on(alternate(
        || workhost_run(&handler, &input),
        || counter_run(&counter, &kv),
    ));
    println!(
        "one thread   counter  {:>8.1} us/run (one kv increment, in memory; echo {:.1} us/run in the same batches): \
         counter - echo {:.1} us",
        us(c1),
        us(e1),
        us(c1) - us(e1)
    );

    // All cores: a multi-thread runtime with 64 runs in flight.
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(cores)
        .enable_all()
        .build()
        .unwrap();
    let total = BATCH * 4;
    let (mut floor_rates, mut host_rates) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        floor_rates.push(rt.block_on(parallel(total, {
            let floor = floor.clone();
            let input = floor_input.clone();
            move || {
                let (floor, input) = (floor.clone(), input.clone());
                async move { floor.run(&input).await }
            }
        })));
        host_rates.push(rt.block_on(parallel(total, {
            let handler = handler.clone();
            let input = input.clone();
            move || {
                let (handler, input) = (handler.clone(), input.clone());
                async move { workhost_run(&handler, &input).await }
            }
        })));
    }
    let (fa, ha) = (median(floor_rates), median(host_rates));
    println!(
        "{cores} cores      floor    {:>9.0} runs/s",
        total as f64 / fa.as_secs_f64()
    );
    println!(
        "{cores} cores      workhost {:>9.0} runs/s",
        total as f64 / ha.as_secs_f64()
    );
    println!(
        "{cores} cores      ratio workhost/floor (time per run): {:.2}x",
        ha.as_secs_f64() / fa.as_secs_f64()
    );
}

/// The median time per run of `a` and of `b`, after a warm-up of both:
/// batches of each alternate, so both see the same machine noise.
async fn alternate<A, B, FA, FB>(a: A, b: B) -> (Duration, Duration)
where
    A: Fn() -> FA,
    B: Fn() -> FB,
    FA: std::future::Future<Output = ()>,
    FB: std::future::Future<Output = ()>,
{
    for _ in 0..200 {
        a().await;
        b().await;
    }
    let (mut a_times, mut b_times) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let t = Instant::now();
        for _ in 0..BATCH {
            a().await;
        }
        a_times.push(t.elapsed() / BATCH as u32);
        let t = Instant::now();
        for _ in 0..BATCH {
            b().await;
        }
        b_times.push(t.elapsed() / BATCH as u32);
    }
    (median(a_times), median(b_times))
}

/// Runs `total` runs with 64 in flight and returns the elapsed time.
async fn parallel<F, Fut>(total: usize, make: F) -> Duration
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let start = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..total {
        if set.len() >= 64 {
            set.join_next().await.unwrap().unwrap();
        }
        set.spawn(make());
    }
    while let Some(r) = set.join_next().await {
        r.unwrap();
    }
    start.elapsed()
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn per_sec(d: Duration) -> f64 {
    1.0 / d.as_secs_f64()
}

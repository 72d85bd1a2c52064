//! `recurse`: unbounded recursion until the host's wasm stack limit stops
//! it (`stack-overflow`).
use std::hint::black_box;
use workhost_guest::{Handler, Input, Outcome, Output};

struct Recurse;

#[allow(
    unconditional_recursion,
    reason = "the point of this example is to overflow the stack"
)]
fn depth(n: u64) -> u64 {
    black_box(depth(black_box(n + 1))) + n
}

impl Handler for Recurse {
    fn execute(_name: &str, _input: Input) -> Result<Outcome, String> {
        Output::new().with("depth", depth(0) as i64).success()
    }
}

workhost_guest::export_handler!(Recurse);

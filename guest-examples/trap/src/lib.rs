//! `trap`: panics, which a wasm guest turns into a trap.
use workhost_guest::{Handler, Input, Outcome};

struct Trap;

impl Handler for Trap {
    fn execute(_name: &str, _input: Input) -> Result<Outcome, String> {
        panic!("trap handler panicked on purpose")
    }
}

workhost_guest::export_handler!(Trap);

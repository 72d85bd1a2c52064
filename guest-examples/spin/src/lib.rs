//! `spin`: an endless loop that never calls the host.
use std::hint::black_box;
use workhost_guest::{Handler, Input, Outcome};

struct Spin;

impl Handler for Spin {
    fn execute(_name: &str, _input: Input) -> Result<Outcome, String> {
        let mut n: u64 = 0;
        loop {
            n = black_box(n.wrapping_add(1));
        }
    }
}

workhost_guest::export_handler!(Spin);

//! `fail`: fails permanently with the input string `message`, or a default.
use workhost_guest::{Handler, Input, Outcome};

struct Fail;

impl Handler for Fail {
    fn execute(_name: &str, input: Input) -> Result<Outcome, String> {
        Err(input
            .str("message")
            .unwrap_or("fail handler failed on purpose")
            .to_string())
    }
}

workhost_guest::export_handler!(Fail);

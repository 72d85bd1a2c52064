//! `echo`: the input data becomes the output data.
use workhost_guest::{Handler, Input, Outcome, Output};

struct Echo;

impl Handler for Echo {
    fn execute(_name: &str, input: Input) -> Result<Outcome, String> {
        Output::from(input).success()
    }
}

workhost_guest::export_handler!(Echo);

//! `compat-echo`: `echo` built against the released `workhost:task@0.1.0`
//! contract (`wit/released/`), without the SDK, to prove that a host of a
//! later 0.1.x version still runs components built for 0.1.0.

wit_bindgen::generate!({
    path: "../../wit/released/workhost-task-0.1.0.wit",
    world: "task-handler",
});

use exports::workhost::task::handler::Guest;
use workhost::task::types::{Outcome, Value};

struct Echo;

impl Guest for Echo {
    fn execute_task(_name: String, input_data: Vec<(String, Value)>) -> Result<Outcome, String> {
        Ok(Outcome::Success(input_data))
    }
}

export!(Echo);

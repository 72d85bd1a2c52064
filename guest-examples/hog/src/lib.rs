//! `hog`: grows its memory one MiB at a time, touching every page, until the
//! host stops it.
use std::hint::black_box;
use workhost_guest::{Handler, Input, Outcome};

struct Hog;

impl Handler for Hog {
    fn execute(_name: &str, _input: Input) -> Result<Outcome, String> {
        let mut chunks: Vec<Vec<u8>> = Vec::new();
        loop {
            chunks.push(vec![0xA5; 1 << 20]);
            black_box(&chunks);
        }
    }
}

workhost_guest::export_handler!(Hog);

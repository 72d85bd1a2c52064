//! The CLI's value parsers (`--input K=V`, durations, sizes): never panic,
//! and a parsed `K=V` pair is one the data rules accept.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workhost::Data;
use workhost::units::{format_duration, format_size, parse_duration, parse_size};

fuzz_target!(|text: &str| {
    if let Ok((key, value)) = Data::parse_key_value(text) {
        assert!(!key.is_empty());
        // One pair is within every limit unless the text itself is huge.
        if text.len() < 1000 {
            Data::from_pairs([(key, value)]).expect("a parsed pair is valid data");
        }
    }
    if let Ok(d) = parse_duration(text) {
        let _ = format_duration(d);
    }
    if let Ok(n) = parse_size(text) {
        let _ = format_size(n);
    }
});

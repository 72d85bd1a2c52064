//! Task input data from JSON (what `enqueue --input-json` and the store
//! read): never panics; what is accepted is valid, within the size limit,
//! and survives its own canonical form unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use workhost::{Data, MAX_DATA_BYTES};

fuzz_target!(|text: &str| {
    let Ok(data) = Data::from_json(text) else {
        return;
    };
    data.validate().expect("accepted data is valid");
    let json = data.to_json();
    assert!(json.len() <= MAX_DATA_BYTES, "accepted {} bytes", json.len());
    assert_eq!(Data::from_json(&json).expect("canonical form parses"), data);
    // The pairs a guest would hand back build the same data.
    let pairs = data.iter().map(|(k, v)| (k.clone(), v.clone()));
    assert_eq!(Data::from_pairs(pairs).expect("its own pairs are accepted"), data);
});

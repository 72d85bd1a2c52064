//! Manifest parsing: any text gives a configuration or an error that names
//! the manifest, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    let path = Path::new("/nonexistent/fuzz/workhost.toml");
    if let Err(e) = workhost::parse_manifest(text, path, None) {
        let message = e.to_string();
        assert!(!message.is_empty());
    }
});

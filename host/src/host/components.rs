//! Retained component versions (docs/versions.md): every component a host
//! loads is kept as `<data_dir>/components/<handler>/<sha256>.wasm`, so
//! work pinned to a version (`handler@digest`) can still run it after a
//! reload replaced it, and after a restart.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// How many versions of each handler are kept besides the current one and
/// those pinned by unfinished work: the most recently loaded.
pub const RETAINED_VERSIONS: usize = 5;

/// Shortest digest prefix a pin may use.
pub const MIN_PIN_DIGITS: usize = 8;

/// The folder of `handler`'s retained versions.
pub(crate) fn handler_dir(root: &Path, handler: &str) -> PathBuf {
    root.join(handler)
}

/// Keeps `bytes` as `handler`'s version `digest` (once; a version already
/// kept is only marked as loaded now).
pub(crate) fn retain(root: &Path, handler: &str, digest: &str, bytes: &[u8]) -> std::io::Result<()> {
    let dir = handler_dir(root, handler);
    std::fs::create_dir_all(&dir)?;
    let path = dir.join(format!("{digest}.wasm"));
    if path.is_file() {
        let f = std::fs::File::options().append(true).open(&path)?;
        f.set_modified(std::time::SystemTime::now())?;
        return Ok(());
    }
    let tmp = dir.join(format!("{digest}.wasm.tmp"));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, &path)
}

/// `handler`'s retained versions, most recently loaded first.
pub(crate) fn retained(root: &Path, handler: &str) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(handler_dir(root, handler)) else {
        return Vec::new();
    };
    let mut found: Vec<(std::time::SystemTime, String)> = entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let digest = name.strip_suffix(".wasm")?.to_string();
            let at = e.metadata().and_then(|m| m.modified()).ok()?;
            Some((at, digest))
        })
        .collect();
    found.sort_by(|a, b| b.cmp(a));
    found.into_iter().map(|(_, d)| d).collect()
}

/// Checks a pin's form: hex digits, [`MIN_PIN_DIGITS`] to 64.
pub(crate) fn check_pin(handler: &str, pin: &str) -> Result<(), String> {
    if pin.len() < MIN_PIN_DIGITS || pin.len() > 64 || !pin.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(format!(
            "the version pin {handler}@{pin} is not a component digest: write {MIN_PIN_DIGITS} to 64 hex digits of its SHA-256 (`workhost inspect` shows each attempt's)"
        ));
    }
    Ok(())
}

/// The one retained version of `handler` whose digest starts with `pin`.
pub(crate) fn resolve(root: &Path, handler: &str, pin: &str) -> Result<String, String> {
    check_pin(handler, pin)?;
    let pin = pin.to_ascii_lowercase();
    let all = retained(root, handler);
    let matching: Vec<&String> = all.iter().filter(|d| d.starts_with(&pin)).collect();
    match matching.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(format!(
            "no retained component of handler {handler:?} matches @{pin}; retained: {}",
            if all.is_empty() {
                "none".to_string()
            } else {
                all.iter()
                    .map(|d| d[..12.min(d.len())].to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        )),
        _ => Err(format!(
            "@{pin} matches {} retained components of handler {handler:?}; give more digits",
            matching.len()
        )),
    }
}

/// Removes `handler`'s versions beyond the [`RETAINED_VERSIONS`] most
/// recently loaded, except those in `keep` (the current one, and those
/// unfinished work is pinned to).
pub(crate) fn prune(root: &Path, handler: &str, keep: &HashSet<String>) {
    for (i, digest) in retained(root, handler).into_iter().enumerate() {
        if i >= RETAINED_VERSIONS && !keep.contains(&digest) {
            let _ = std::fs::remove_file(handler_dir(root, handler).join(format!("{digest}.wasm")));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_kept_resolved_by_prefix_and_pruned_to_the_latest() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let digests: Vec<String> = (0..8).map(|i| format!("{i:x}").repeat(64)).collect();
        for (i, d) in digests.iter().enumerate() {
            retain(root, "h", d, format!("v{i}").as_bytes()).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(15));
        }
        assert_eq!(retained(root, "h")[0], digests[7], "most recent first");
        assert_eq!(resolve(root, "h", &digests[3][..8]), Ok(digests[3].clone()));
        assert!(resolve(root, "h", "abc").unwrap_err().contains("8 to 64 hex digits"));
        assert!(resolve(root, "h", "zzzzzzzz").unwrap_err().contains("hex digits"));
        assert!(
            resolve(root, "h", "99999999")
                .unwrap_err()
                .contains("no retained component")
        );
        let keep: HashSet<String> = [digests[0].clone()].into();
        prune(root, "h", &keep);
        let left = retained(root, "h");
        assert_eq!(left.len(), RETAINED_VERSIONS + 1);
        assert!(left.contains(&digests[0]), "a pinned version stays");
        assert!(!left.contains(&digests[1]));
    }
}

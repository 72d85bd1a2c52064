//! Components are checked when loaded: bad ones are refused with a message
//! that says what is wrong; good ones are compiled once and cached.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use workhost::{CacheStatus, Data, Engine, EngineConfig, EngineError, Executor, LoadError, RunRequest, RunResult};
use workhost_tests::{executor, guests};

fn load_error(bytes: &[u8]) -> LoadError {
    executor().load_bytes(bytes).expect_err("the component must be refused")
}

#[test]
fn a_file_that_is_not_wasm_is_refused() {
    let err = load_error(b"#!/bin/sh\necho hello\n");
    assert!(matches!(err, LoadError::NotWasm), "{err}");
    assert!(err.to_string().contains("not a WebAssembly file"));
}

#[test]
fn a_core_module_is_refused_with_how_to_make_a_component() {
    let err = load_error(&wat::parse_str("(module)").unwrap());
    assert!(matches!(err, LoadError::CoreModule), "{err}");
    assert!(err.to_string().contains("wasm32-wasip2"), "{err}");
}

#[test]
fn a_truncated_component_is_refused_as_invalid() {
    let bytes = std::fs::read(guests::ECHO).unwrap();
    let err = load_error(&bytes[..bytes.len() / 2]);
    assert!(matches!(err, LoadError::Invalid(_)), "{err}");
}

#[test]
fn a_component_without_the_handler_export_is_refused_naming_it() {
    let err = load_error(&wat::parse_str("(component)").unwrap());
    let message = err.to_string();
    assert!(matches!(err, LoadError::MissingExport { .. }), "{message}");
    assert!(
        message.contains("workhost:task/handler@0.1.1") && message.contains("exports nothing"),
        "{message}"
    );
}

#[test]
fn a_component_for_another_contract_version_is_refused_naming_both() {
    let wat = r#"(component (instance $i) (export "workhost:task/handler@0.2.0" (instance $i)))"#;
    let message = load_error(&wat::parse_str(wat).unwrap()).to_string();
    assert!(
        message.contains("workhost:task/handler@0.2.0") && message.contains("workhost:task/handler@0.1.1"),
        "{message}"
    );
}

#[test]
fn a_handler_export_of_the_wrong_shape_is_refused() {
    let wat = r#"(component (instance $i) (export "workhost:task/handler@0.1.0" (instance $i)))"#;
    let err = load_error(&wat::parse_str(wat).unwrap());
    assert!(matches!(err, LoadError::BadExport { .. }), "{err}");
    assert!(err.to_string().contains("execute-task"), "{err}");
}

#[test]
fn a_component_importing_what_the_host_lacks_is_refused_naming_the_import() {
    let wat = r#"(component (import "example:secret/vault@1.0.0" (instance (export "open" (func)))))"#;
    let err = load_error(&wat::parse_str(wat).unwrap());
    assert!(
        matches!(&err, LoadError::MissingImport { name, .. } if name == "example:secret/vault@1.0.0"),
        "{err}"
    );
}

#[test]
fn a_second_host_start_loads_the_compile_cache_and_compiles_nothing() {
    let cache = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..EngineConfig::default()
    };

    let first = Executor::new(config.clone()).unwrap();
    let handler = first.load_file(guests::ECHO.as_ref()).unwrap();
    assert_eq!(handler.cache_status(), CacheStatus::Compiled);
    assert_eq!(first.engine().compiled_count(), 1);
    drop(first);

    let second = Executor::new(config.clone()).unwrap();
    for guest in [guests::ECHO, guests::ECHO] {
        assert_eq!(
            second.load_file(guest.as_ref()).unwrap().cache_status(),
            CacheStatus::Hit
        );
    }
    assert_eq!(second.engine().compiled_count(), 0);
    assert_eq!(second.engine().cache_hit_count(), 2);

    // Another engine configuration (no fuel metering) cannot use that code.
    let unmetered = Executor::new(EngineConfig { fuel: false, ..config }).unwrap();
    assert_eq!(
        unmetered.load_file(guests::ECHO.as_ref()).unwrap().cache_status(),
        CacheStatus::Compiled
    );
}

#[test]
fn a_corrupt_cache_entry_is_recompiled_not_trusted() {
    let cache = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..EngineConfig::default()
    };
    Executor::new(config.clone())
        .unwrap()
        .load_file(guests::ECHO.as_ref())
        .unwrap();
    let entry = walk(cache.path())
        .into_iter()
        .find(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .unwrap();
    std::fs::write(&entry, b"garbage").unwrap();
    let again = Executor::new(config).unwrap();
    assert_eq!(
        again.load_file(guests::ECHO.as_ref()).unwrap().cache_status(),
        CacheStatus::Compiled
    );
}

/// Engines sharing a cache folder, compiling different components at the
/// same moment, each store their code under their own component's key.
/// (When the temporary file's name was counted per engine, two engines
/// wrote the same one, and one component's code was stored under the
/// other's key. The JavaScript builds of `echo` and `fail` compile in about
/// the same time to about 40 MB each, so their writes overlap: with the
/// per-engine name this test failed in one of two runs.)
#[tokio::test]
async fn engines_compiling_into_one_cache_at_once_keep_each_component_its_own_code() {
    let cache = tempfile::tempdir().unwrap();
    let config = EngineConfig {
        cache_dir: Some(cache.path().to_path_buf()),
        ..EngineConfig::default()
    };
    let js = |name: &str| {
        guests::LANGUAGE_EXAMPLES
            .iter()
            .find(|(e, l, _)| *e == name && *l == "js")
            .map(|(_, _, path)| *path)
            .unwrap()
    };
    let (echo_js, fail_js) = (js("echo"), js("fail"));
    let all = [echo_js, fail_js];
    let start = std::sync::Barrier::new(all.len());
    std::thread::scope(|s| {
        for guest in all {
            let (config, start) = (config.clone(), &start);
            s.spawn(move || {
                let executor = Executor::new(config).unwrap();
                start.wait();
                executor.load_file(guest.as_ref()).unwrap();
            });
        }
    });
    let executor = Executor::new(config).unwrap();
    let echo = executor.load_file(echo_js.as_ref()).unwrap();
    assert_eq!(echo.cache_status(), CacheStatus::Hit);
    let input = Data::new().with("n", 1i64);
    let mut request = RunRequest::new("echo");
    request.input = input.clone();
    assert_eq!(echo.run(request).await.result, RunResult::Succeeded(input));
    let fail = executor.load_file(fail_js.as_ref()).unwrap();
    assert_eq!(fail.cache_status(), CacheStatus::Hit);
    assert_eq!(
        fail.run(RunRequest::new("fail")).await.error(),
        Some("fail handler failed on purpose")
    );
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

#[tokio::test]
async fn a_component_built_for_the_released_0_1_0_contract_still_runs() {
    let handler = workhost_tests::executor()
        .load_file(workhost_tests::guests::COMPAT_ECHO.as_ref())
        .expect("a 0.1.0 component loads on a 0.1.1 host");
    let mut r = workhost::RunRequest::new("compat");
    r.input = workhost::Data::new().with("n", 7i64);
    let outcome = handler.run(r).await;
    assert_eq!(outcome.output(), Some(&workhost::Data::new().with("n", 7i64)));
}

/// A small component of its own: `n` makes each one a different cache entry.
fn tiny_component(n: u32) -> Vec<u8> {
    wat::parse_str(format!(
        "(component (core module (func (export \"f\") (result i32) i32.const {n})))"
    ))
    .unwrap()
}

fn cache_entries(dir: &Path) -> Vec<PathBuf> {
    walk(dir)
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "cwasm"))
        .collect()
}

fn cached_engine(dir: &Path, max_bytes: u64) -> Result<Engine, EngineError> {
    Engine::new(EngineConfig {
        cache_dir: Some(dir.to_path_buf()),
        cache_max_bytes: max_bytes,
        pooling: false,
        ..EngineConfig::default()
    })
}

#[test]
fn the_compile_cache_keeps_to_its_cap_by_evicting_the_least_recently_used() {
    let (a, b, c) = (tiny_component(1), tiny_component(2), tiny_component(3));
    let measure = tempfile::tempdir().unwrap();
    let engine = cached_engine(measure.path(), u64::MAX).unwrap();
    for component in [&a, &b, &c] {
        engine.load_component(component).unwrap();
    }
    let all_three: u64 = cache_entries(measure.path())
        .iter()
        .map(|p| p.metadata().unwrap().len())
        .sum();

    // Room for any two entries, not for three.
    let cache = tempfile::tempdir().unwrap();
    let engine = cached_engine(cache.path(), all_three - 1).unwrap();
    let load = |component: &[u8]| engine.load_component(component).unwrap().1;
    assert_eq!(load(&a), CacheStatus::Compiled);
    assert_eq!(load(&b), CacheStatus::Compiled);
    assert_eq!(load(&a), CacheStatus::Hit, "a is now the most recently used");
    assert_eq!(load(&c), CacheStatus::Compiled);
    assert_eq!(
        cache_entries(cache.path()).len(),
        2,
        "b, the least recently used, is gone"
    );
    assert_eq!(load(&a), CacheStatus::Hit);
    assert_eq!(load(&c), CacheStatus::Hit);
    assert_eq!(load(&b), CacheStatus::Compiled);

    // An entry larger than the cap is kept, alone: the entry just written
    // is never evicted.
    let tight = tempfile::tempdir().unwrap();
    let engine = cached_engine(tight.path(), 1).unwrap();
    engine.load_component(&a).unwrap();
    engine.load_component(&b).unwrap();
    assert_eq!(cache_entries(tight.path()).len(), 1);
    assert_eq!(engine.load_component(&b).unwrap().1, CacheStatus::Hit);
}

#[test]
fn the_compile_cache_is_created_private_and_one_others_could_write_is_refused() {
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("cache");
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    cached_engine(&dir, u64::MAX)
        .unwrap()
        .load_component(&tiny_component(1))
        .unwrap();
    let entry = cache_entries(&dir).pop().unwrap();
    let engine_dir = entry.parent().unwrap().to_path_buf();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&engine_dir), 0o700);

    // A folder of ours that others may read (as older versions left it) is
    // made private.
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    cached_engine(&dir, u64::MAX).unwrap();
    assert_eq!(mode(&dir), 0o700);

    // One that others may write is refused, naming the folder and the fix.
    for (path, bits) in [(&dir, 0o777), (&dir, 0o720), (&engine_dir, 0o702)] {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(bits)).unwrap();
        let error = cached_engine(&dir, u64::MAX).unwrap_err();
        let text = error.to_string();
        assert!(
            matches!(error, EngineError::UnsafeCache { .. })
                && text.contains(&format!("{path:?}"))
                && text.contains("written by its group or others")
                && text.contains("chmod 700"),
            "{text}"
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).unwrap();
    }

    // Another user's folder is refused (only root can give a folder away).
    match std::os::unix::fs::chown(&dir, Some(65534), None) {
        Ok(()) => {
            let text = cached_engine(&dir, u64::MAX).unwrap_err().to_string();
            assert!(text.contains("is owned by uid 65534"), "{text}");
        }
        Err(e) => eprintln!("not checking another user's cache folder: chown needs root ({e})"),
    }
}

//! The C ABI (crate workhost-capi), only through its public surface: C
//! programs built with the system `cc` against the checked-in header and
//! the cdylib, the bad-input table under valgrind, Python through `ctypes`,
//! and the header against what cbindgen makes of the crate now.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use workhost_tests::{root, write_manifest};

/// The cdylib `cargo test` built for this test binary (workhost-capi is a
/// dev-dependency of this crate): `target/<profile>/deps/libworkhost_capi.so`.
fn cdylib() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let deps = exe.parent().expect("target/<profile>/deps");
    let lib = deps.join(format!(
        "{}workhost_capi{}",
        std::env::consts::DLL_PREFIX,
        std::env::consts::DLL_SUFFIX
    ));
    assert!(
        lib.exists(),
        "{lib:?} is missing: cargo builds it with the tests (workhost-capi is a dev-dependency of workhost-tests); run `cargo test -p workhost-tests`"
    );
    lib
}

fn header_dir() -> PathBuf {
    root().join("host/capi/include")
}

/// Builds `tests/capi/<name>.c` against the header and the cdylib (found
/// at run time through an rpath) with warnings as errors.
fn build_c(name: &str, dir: &Path) -> PathBuf {
    let lib = cdylib();
    let lib_dir = lib.parent().unwrap();
    let exe = dir.join(name);
    let output = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-g", "-O1", "-o"])
        .arg(&exe)
        .arg(root().join(format!("tests/capi/{name}.c")))
        .arg("-I")
        .arg(header_dir())
        .arg(format!("-L{}", lib_dir.display()))
        .arg(format!("-Wl,-rpath,{}", lib_dir.display()))
        .args(["-lworkhost_capi", "-lpthread"])
        .output()
        .expect("running cc (the system C compiler; Rust needs it to link, so it should be there)");
    assert!(output.status.success(), "cc failed for {name}.c:\n{}", text(&output));
    exe
}

/// A command for a program built by [`build_c`]. `cargo test` puts
/// `target/<profile>` first on `LD_LIBRARY_PATH`, which outranks the rpath;
/// a `libworkhost_capi.so` left there by `cargo build -p workhost-capi`
/// may be stale, so the path names only the cdylib under test.
fn c_program(program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut command = Command::new(program);
    command.env("LD_LIBRARY_PATH", cdylib().parent().unwrap());
    command
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A data directory with the test manifest (handlers echo, spin, ...).
fn manifest_dir() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let manifest = write_manifest(dir.path());
    (dir, manifest)
}

/// Runs `exe args` under valgrind, which fails it (exit 99) on any invalid
/// read or write, use of uninitialised memory, bad free or definite leak;
/// returns the output once the program exited 0 and valgrind found nothing.
/// "Possibly lost" blocks are reported but not failed: hashbrown tables
/// point into the middle of their allocation, and std keeps a handle per
/// thread, which valgrind cannot tell from a leak.
fn under_valgrind(exe: &Path, args: &[&Path]) -> String {
    let version = Command::new("valgrind").arg("--version").output();
    assert!(
        version.as_ref().is_ok_and(|o| o.status.success()),
        "valgrind is not installed: `scripts/just setup` installs it (scripts/valgrind-install); this test does not skip"
    );
    let output = c_program("valgrind")
        .args([
            "--error-exitcode=99",
            "--leak-check=full",
            "--errors-for-leak-kinds=definite",
            "--show-leak-kinds=definite",
            // Not --track-origins=yes: it makes the host program 13 times
            // slower (5 min); add it by hand to find where an
            // uninitialised value came from.
            "--num-callers=30",
        ])
        .arg(format!(
            "--suppressions={}",
            root().join("tests/capi/valgrind.supp").display()
        ))
        .arg(exe)
        .args(args)
        .output()
        .expect("running the program under valgrind");
    let out = text(&output);
    assert_eq!(
        output.status.code(),
        Some(0),
        "exit 99 is valgrind finding an error; any other, the program failing:\n{out}"
    );
    assert!(out.contains("ERROR SUMMARY: 0 errors"), "{out}");
    out
}

/// The whole life of a host from C, under valgrind: open, callback (which
/// calls back in), enqueue and wait, get, list, run-once, four threads on
/// one handle, cancel, pause, resume, shutdown, free.
#[test]
fn a_c_program_runs_a_host_through_the_header() {
    let (dir, manifest) = manifest_dir();
    let exe = build_c("host", dir.path());
    let out = under_valgrind(&exe, &[&manifest]);
    for line in [
        "version 0.1.0",
        "succeeded by callback",
        "task json has the output",
        "listed",
        "from the callback: get 0, shutdown 10",
        "run once: success",
        "run once of a failing handler: failed, as data",
        "40 tasks enqueued from 4 threads succeeded",
        "cancelled",
        "after shutdown: 6",
        "\nok\n",
    ] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
}

/// Every case of the bad-input table returns its documented code, and the
/// whole program, from open to free, runs under valgrind without an
/// invalid access or a definite leak.
#[test]
fn bad_input_across_the_boundary_returns_its_code_and_valgrind_finds_nothing() {
    let (dir, manifest) = manifest_dir();
    let exe = build_c("bad_input", dir.path());
    let toml_dir = dir.path().join("inline");
    std::fs::create_dir_all(&toml_dir).unwrap();
    let out = under_valgrind(&exe, &[&manifest, &toml_dir]);
    assert!(out.contains("cases passed"), "{out}");
    assert!(!out.contains("FAIL"), "{out}");
}

#[test]
fn python_drives_a_real_host_through_ctypes() {
    let (_dir, manifest) = manifest_dir();
    let output = Command::new("python3")
        .arg(root().join("tests/capi/host.py"))
        .arg(cdylib())
        .arg(&manifest)
        .output()
        .expect("running python3 (CI has it; install python3 otherwise)");
    let out = text(&output);
    assert!(output.status.success(), "{out}");
    for line in ["succeeded", "spin running", "spin cancelled", "shut down", "ok"] {
        assert!(out.contains(line), "no {line:?} in\n{out}");
    }
}

/// The checked-in header is what cbindgen makes of the crate now.
#[test]
fn header_is_what_cbindgen_generates() {
    let crate_dir = root().join("host/capi");
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("reading cbindgen.toml");
    let mut generated = Vec::new();
    cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen reads host/capi")
        .write(&mut generated);
    let path = header_dir().join("workhost.h");
    if std::env::var_os("WORKHOST_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("writing the header");
    }
    let checked_in = std::fs::read(&path).unwrap_or_default();
    assert!(
        checked_in == generated,
        "{path:?} is stale: it differs from what cbindgen generates from host/capi/src now. Write it again with\n  WORKHOST_BLESS=1 cargo test -p workhost-tests --test all capi::header\nand commit it."
    );
}

/// Every error code in the header is documented in docs/embedding.md.
#[test]
fn every_error_code_is_in_the_reference() {
    let header = std::fs::read_to_string(header_dir().join("workhost.h")).unwrap();
    let docs = std::fs::read_to_string(root().join("docs/embedding.md")).unwrap();
    let mut codes = 0;
    for line in header.lines() {
        // The codes, not the include guard: `#define WORKHOST_X <number>`.
        let mut words = line.split_whitespace();
        if let (Some("#define"), Some(name), Some(value)) = (words.next(), words.next(), words.next())
            && name.starts_with("WORKHOST_")
            && value.parse::<i32>().is_ok()
        {
            assert!(
                docs.contains(&format!("`{name}`")),
                "{name} is not in docs/embedding.md"
            );
            codes += 1;
        }
    }
    assert!(codes >= 12, "the header defines {codes} codes");
    for function in header.lines().filter_map(|l| {
        let start = l.find("workhost_")?;
        let rest = &l[start..];
        let end = rest.find('(')?;
        // Declarations start at the line's start; comments and the
        // callback's typedef do not count.
        let declaration = !l.starts_with([' ', '/', '#']) && !l.starts_with("typedef");
        declaration.then(|| rest[..end].to_string())
    }) {
        assert!(
            docs.contains(&format!("`{function}")),
            "{function} is not in docs/embedding.md"
        );
    }
}

/// The README's C example compiles against the header as written.
#[test]
fn readme_c_example_compiles() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let section = &readme[readme
        .find("## Embedding from other languages")
        .expect("the README's section")..];
    let start = section.find("```c\n").expect("a C block") + "```c\n".len();
    let end = start + section[start..].find("\n```").expect("the block's end");
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("readme.c");
    std::fs::write(&source, &section[start..end]).unwrap();
    let output = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Werror", "-fsyntax-only", "-I"])
        .arg(header_dir())
        .arg(&source)
        .output()
        .expect("running cc");
    assert!(output.status.success(), "the README's C example:\n{}", text(&output));
}

//! Builds every guest example from source (wasm32-wasip2, release) into
//! `target/guests/<name>.wasm` and generates one path constant per guest.
//! No `.wasm` file is committed.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust examples, one crate each under `guest-examples/`.
const RUST_GUESTS: &[&str] = &[
    "echo",
    "fetch",
    "files",
    "escape",
    "compat-echo",
    "config-echo",
    "counter",
    "flaky",
    "fail",
    "trap",
    "spin",
    "hog",
    "recurse",
    "chatty",
];

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest_dir.parent().unwrap().to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let target = if target.is_absolute() {
        target
    } else {
        root.join(target)
    };
    let guests = target.join("guests");
    std::fs::create_dir_all(&guests).unwrap();

    println!("cargo:rerun-if-changed={}", root.join("wit").display());
    println!("cargo:rerun-if-changed={}", root.join("guest-examples").display());
    for dir in ["sdk", "Cargo.toml", "Cargo.lock"].iter().chain(RUST_GUESTS) {
        println!(
            "cargo:rerun-if-changed={}",
            root.join("guest-examples").join(dir).display()
        );
    }

    build_rust_guests(&root, &target.join("guest-build"), &guests);

    let mut consts = String::new();
    for name in RUST_GUESTS {
        let path = guests.join(format!("{name}.wasm"));
        assert!(path.is_file(), "guest {name} was not built to {}", path.display());
        consts.push_str(&format!(
            "/// The `{name}` example, built from guest-examples/{name}.\npub const {}: &str = {:?};\n",
            name.to_uppercase().replace('-', "_"),
            path.display().to_string()
        ));
    }
    std::fs::write(
        PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("guests.rs"),
        consts,
    )
    .unwrap();
}

fn build_rust_guests(root: &Path, build_dir: &Path, out: &Path) {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root.join("guest-examples"))
        .args(["build", "--release", "--target", "wasm32-wasip2", "--target-dir"])
        .arg(build_dir);
    // The outer build's flags are for the host target, not for wasm.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_PROFILE_RELEASE_DEBUG",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd.status().expect("running cargo to build the guest examples");
    assert!(
        status.success(),
        "building the guest examples failed. If the wasm32-wasip2 target is missing, install it with \
         `rustup target add wasm32-wasip2` (the project's `scripts/just setup` does this)"
    );
    for name in RUST_GUESTS {
        // Cargo names a cdylib after its crate, `-` becoming `_`.
        let built = build_dir
            .join("wasm32-wasip2/release")
            .join(format!("{}.wasm", name.replace('-', "_")));
        let dest = out.join(format!("{name}.wasm"));
        // Copy only when changed, so the modification time (and anything keyed
        // on it) stays put across builds.
        let new = std::fs::read(&built).unwrap_or_else(|e| panic!("reading {}: {e}", built.display()));
        if std::fs::read(&dest).ok().as_deref() != Some(&new[..]) {
            std::fs::write(&dest, new).unwrap();
        }
    }
}

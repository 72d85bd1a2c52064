//! Builds every guest example from source into `target/guests/`: the Rust
//! examples (wasm32-wasip2, release) as `<name>.wasm`, and the examples in
//! other languages as `<name>-<lang>.wasm` (`py` with componentize-py, `js`
//! with componentize-js, `c` with wit-bindgen's C generator, zig's clang
//! and wit-component). JavaScript handlers are bundled with their npm
//! packages by esbuild first (`guest-examples/js/build.mjs`); Python
//! handlers get the PyPI packages of `guest-examples/py/requirements.txt`,
//! installed into `target/py-deps`. Generates one path constant per guest
//! and the tables `LANGUAGE_EXAMPLES` and `SOME_LANGUAGES`. No `.wasm`
//! file is committed.
//!
//! The other languages' tools are installed by `scripts/just setup` (which
//! `scripts/just test` runs) into `.tools/venv` and
//! `guest-examples/js/node_modules`; without them the build fails, saying
//! so. Nothing is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The Rust examples, one crate each under `guest-examples/`.
const RUST_GUESTS: &[&str] = &[
    "echo",
    "fetch",
    "files",
    "escape",
    "ledger",
    "hostile",
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
    "clock",
];

/// The examples every language has, and the world each is built against.
const LANGUAGE_EXAMPLES: &[(&str, &str)] = &[
    ("echo", "task-handler"),
    ("counter", "task-handler"),
    ("fetch", "http-task-handler"),
    ("fail", "task-handler"),
    ("spin", "task-handler"),
    ("clock", "task-handler"),
];

/// The examples in some languages only: (example, language, world). `slug`
/// uses a third-party package (Python's pinned in
/// `guest-examples/py/requirements.txt`, JavaScript's in
/// `guest-examples/js/package-lock.json`); `fetch-async` is an async
/// JavaScript handler awaiting fetch().
const SOME_LANGUAGES: &[(&str, &str, &str)] = &[
    ("slug", "py", "task-handler"),
    ("slug", "js", "task-handler"),
    ("fetch-async", "js", "http-task-handler"),
];

/// The languages besides Rust, by file suffix.
const LANGUAGES: &[&str] = &["py", "js", "c"];

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
    build_language_guests(&root, &guests);
    consts.push_str(
        "/// Every example in every language besides Rust: (example, language, path).\npub const LANGUAGE_EXAMPLES: &[(&str, &str, &str)] = &[\n",
    );
    for (name, _) in LANGUAGE_EXAMPLES {
        for lang in LANGUAGES {
            let path = guests.join(format!("{name}-{lang}.wasm"));
            consts.push_str(&format!(
                "    ({name:?}, {lang:?}, {:?}),\n",
                path.display().to_string()
            ));
        }
    }
    consts.push_str("];\n");
    consts.push_str(
        "/// The examples in some languages only: (example, language, path).\npub const SOME_LANGUAGES: &[(&str, &str, &str)] = &[\n",
    );
    for (name, lang, _) in SOME_LANGUAGES {
        let path = guests.join(format!("{name}-{lang}.wasm"));
        consts.push_str(&format!(
            "    ({name:?}, {lang:?}, {:?}),\n",
            path.display().to_string()
        ));
    }
    consts.push_str("];\n");
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

/// The newest modification time of `paths` (files or directories, one level
/// deep).
fn newest(paths: &[PathBuf]) -> std::time::SystemTime {
    let mut newest = std::time::SystemTime::UNIX_EPOCH;
    for p in paths {
        let mut files = vec![p.clone()];
        if p.is_dir() {
            files.extend(std::fs::read_dir(p).unwrap().flatten().map(|e| e.path()));
        }
        for f in files {
            if let Ok(m) = std::fs::metadata(&f).and_then(|m| m.modified()) {
                newest = newest.max(m);
            }
        }
    }
    newest
}

/// Whether `out` exists and is newer than every input.
fn fresh(out: &Path, inputs: &[PathBuf]) -> bool {
    std::fs::metadata(out)
        .and_then(|m| m.modified())
        .is_ok_and(|built| built >= newest(inputs))
}

fn run(mut cmd: Command, what: &str) {
    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("{what}: could not start {:?}: {e}", cmd.get_program()));
    assert!(
        output.status.success(),
        "{what} failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The examples of `lang` (a language besides Rust): every example of
/// `LANGUAGE_EXAMPLES`, then its examples of `SOME_LANGUAGES`, as (name,
/// world).
fn examples_in(lang: &str) -> Vec<(&'static str, &'static str)> {
    let deps = SOME_LANGUAGES
        .iter()
        .filter(|(_, l, _)| *l == lang)
        .map(|(name, _, world)| (*name, *world));
    LANGUAGE_EXAMPLES.iter().copied().chain(deps).collect()
}

/// Installs the pure-Python packages pinned in `requirements` into `dir`
/// (pip `--target`, hashes required, no unlisted dependency), only when the
/// file changed since the last install; returns `dir` for componentize-py's
/// `-p`.
fn install_py_deps(python: &Path, requirements: &Path, dir: &Path) -> PathBuf {
    let stamp = dir.join(".requirements-installed");
    let wanted = std::fs::read(requirements).unwrap_or_else(|e| panic!("reading {}: {e}", requirements.display()));
    if std::fs::read(&stamp).ok().as_deref() == Some(&wanted[..]) {
        return dir.to_path_buf();
    }
    let _ = std::fs::remove_dir_all(dir);
    let mut cmd = Command::new(python);
    cmd.args([
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--require-hashes",
        "--target",
    ])
    .arg(dir)
    .arg("-r")
    .arg(requirements);
    run(
        cmd,
        &format!(
            "installing the Python examples' packages from {}",
            requirements.display()
        ),
    );
    std::fs::write(&stamp, wanted).unwrap();
    dir.to_path_buf()
}

/// Builds the Python and JavaScript examples, the two languages in
/// parallel, each example only when its sources or the WIT changed.
fn build_language_guests(root: &Path, out: &Path) {
    let wit = root.join("wit");
    let py_dir = root.join("guest-examples/py");
    let js_dir = root.join("guest-examples/js");
    let componentize_py = root.join(".tools/venv/bin/componentize-py");
    let componentize_js = js_dir.join("node_modules/@bytecodealliance/componentize-js/package.json");
    let python = root.join(".tools/venv/bin/python");
    for (tool, what) in [
        (&python, "the project's Python tools (zig for C handlers)"),
        (&componentize_py, "componentize-py (Python handlers)"),
        (&componentize_js, "componentize-js (JavaScript handlers)"),
    ] {
        assert!(
            tool.is_file(),
            "{what} is not installed at {}: run `scripts/just setup` (`scripts/just test` does it), which installs \
             the project's pinned guest toolchains",
            tool.display()
        );
    }
    for dir in [
        &wit,
        &wit.join("deps"),
        &py_dir,
        &js_dir.join("package-lock.json"),
        &js_dir.join("build.mjs"),
    ] {
        println!("cargo:rerun-if-changed={}", dir.display());
    }
    for (name, _) in examples_in("js") {
        println!("cargo:rerun-if-changed={}", js_dir.join(format!("{name}.js")).display());
    }
    println!("cargo:rerun-if-changed={}", js_dir.join("workhost.js").display());
    println!("cargo:rerun-if-changed={}", componentize_py.display());

    let wit_inputs = |extra: Vec<PathBuf>| {
        let mut v = vec![wit.clone()];
        v.extend(["io", "clocks", "random", "cli", "filesystem", "sockets", "http"].map(|d| wit.join("deps").join(d)));
        v.extend(extra);
        v
    };
    std::thread::scope(|scope| {
        scope.spawn(|| {
            let py_deps = install_py_deps(
                &python,
                &py_dir.join("requirements.txt"),
                &out.parent().unwrap().join("py-deps"),
            );
            for (name, world) in examples_in("py") {
                let dest = out.join(format!("{name}-py.wasm"));
                let inputs = wit_inputs(vec![
                    py_dir.join(format!("{name}.py")),
                    py_dir.join("workhost.py"),
                    py_dir.join("workhost_http.py"),
                    py_dir.join("requirements.txt"),
                    componentize_py.clone(),
                ]);
                if fresh(&dest, &inputs) {
                    continue;
                }
                let mut cmd = Command::new(&componentize_py);
                cmd.arg("-d")
                    .arg(&wit)
                    .args(["-w", world, "componentize", name, "-p"])
                    .arg(&py_dir)
                    .arg("-p")
                    .arg(&py_deps)
                    .arg("-o")
                    .arg(&dest);
                run(
                    cmd,
                    &format!("building guest-examples/py/{name}.py with componentize-py"),
                );
            }
        });
        scope.spawn(|| build_c_guests(root, out, &python, &wit_inputs));
        scope.spawn(|| {
            for (name, world) in examples_in("js") {
                let dest = out.join(format!("{name}-js.wasm"));
                let inputs = wit_inputs(vec![
                    js_dir.join(format!("{name}.js")),
                    js_dir.join("workhost.js"),
                    js_dir.join("build.mjs"),
                    js_dir.join("package-lock.json"),
                ]);
                if fresh(&dest, &inputs) {
                    continue;
                }
                let mut cmd = Command::new("node");
                cmd.current_dir(&js_dir)
                    .arg("build.mjs")
                    .arg(format!("{name}.js"))
                    .arg(&dest)
                    .arg(world);
                run(
                    cmd,
                    &format!("building guest-examples/js/{name}.js with componentize-js"),
                );
            }
        });
    });
}

/// Builds the C examples: bindings per world (wit-bindgen's C generator),
/// a core module per example (zig's clang for wasm32-wasi, as a reactor),
/// then the component (wit-component with the WASI preview1 adapter).
fn build_c_guests(root: &Path, out: &Path, python: &Path, wit_inputs: &dyn Fn(Vec<PathBuf>) -> Vec<PathBuf>) {
    let c_dir = root.join("guest-examples/c");
    println!("cargo:rerun-if-changed={}", c_dir.display());
    let work = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("c");
    let target = out.parent().unwrap();
    write_c_sdk(&root.join("wit"), &target.join("c-sdk"));
    for (name, world) in LANGUAGE_EXAMPLES {
        let dest = out.join(format!("{name}-c.wasm"));
        let inputs = wit_inputs(vec![c_dir.join(format!("{name}.c")), c_dir.join("workhost.h")]);
        if fresh(&dest, &inputs) {
            continue;
        }
        let gen_dir = work.join(world);
        let stem = world.replace('-', "_");
        if !gen_dir.join(format!("{stem}.h")).is_file() {
            c_bindings(&root.join("wit"), world, &gen_dir);
        }
        let core = work.join(format!("{name}-core.wasm"));
        let mut cmd = Command::new(python);
        cmd.args([
            "-m",
            "ziglang",
            "cc",
            "--target=wasm32-wasi",
            "-mexec-model=reactor",
            "-O2",
            "-s",
        ])
        // A 64 KiB shadow stack instead of 1 MiB: a handler's memory
        // starts at 128 KiB.
        .arg("-Wl,-z,stack-size=65536")
        .arg("-I")
        .arg(&gen_dir)
        .arg(c_dir.join(format!("{name}.c")))
        .arg(gen_dir.join(format!("{stem}.c")))
        .arg(gen_dir.join(format!("{stem}_component_type.o")))
        .arg("-o")
        .arg(&core)
        .env("ZIG_GLOBAL_CACHE_DIR", target.join("zig-cache"))
        .env("ZIG_LOCAL_CACHE_DIR", target.join("zig-cache"));
        if *world == "http-task-handler" {
            cmd.arg("-DWORKHOST_HTTP");
        }
        run(cmd, &format!("compiling guest-examples/c/{name}.c with zig cc"));
        let module = std::fs::read(&core).unwrap();
        let component = wit_component::ComponentEncoder::default()
            .module(&module)
            .and_then(|e| {
                e.validate(true).adapter(
                    wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
                    wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER,
                )
            })
            .and_then(|e| e.encode())
            .unwrap_or_else(|e| panic!("making a component of guest-examples/c/{name}.c: {e:#}"));
        std::fs::write(&dest, component).unwrap();
    }
}

/// What a C handler author needs besides zig and wasm-tools, in `dir`
/// (`target/c-sdk`, the README's C guide): the bindings of each world
/// (`<world>/`) and the WASI preview1 reactor adapter that matches the
/// host's wasmtime (`wasi_snapshot_preview1.reactor.wasm`).
fn write_c_sdk(wit: &Path, dir: &Path) {
    for world in ["task-handler", "http-task-handler"] {
        c_bindings(wit, world, &dir.join(world));
    }
    let adapter = dir.join("wasi_snapshot_preview1.reactor.wasm");
    let bytes = wasi_preview1_component_adapter_provider::WASI_SNAPSHOT_PREVIEW1_REACTOR_ADAPTER;
    if std::fs::read(&adapter).ok().as_deref() != Some(bytes) {
        std::fs::write(&adapter, bytes).unwrap();
    }
}

/// Writes the C bindings of `world` (`<world>.h`, `.c`, `_component_type.o`).
fn c_bindings(wit: &Path, world: &str, dir: &Path) {
    let mut resolve = wit_bindgen_core::wit_parser::Resolve::default();
    let (pkg, _) = resolve.push_path(wit).expect("parsing wit/");
    let world_id = resolve.select_world(&[pkg], Some(world)).expect("selecting the world");
    let mut files = wit_bindgen_core::Files::default();
    wit_bindgen_c::Opts::default()
        .build()
        .generate(&mut resolve, world_id, &mut files)
        .expect("generating C bindings");
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files.iter() {
        let path = dir.join(name);
        if std::fs::read(&path).ok().as_deref() != Some(bytes) {
            std::fs::write(path, bytes).unwrap();
        }
    }
}

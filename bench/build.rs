//! Links the benchmark against the *shipped* libaxalloc archive, the way a C
//! hypervisor links it (one relocatable object, only `axalloc_*` global).
//!
//! - `AXALLOC_LIB_DIR=/dir` : use `/dir/libaxalloc.a` as it is (e.g. a
//!   `cmake --build` tree of the repository: `build-bench/`).
//! - unset (default)        : configure and build the repository's CMake
//!   project into `bench/target/axalloc-build` (target `axalloc_cargo` only:
//!   the archive, no tests or demo) and use that archive. The library is
//!   built by the default (stable) toolchain, exactly as users build it.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A command with the environment of this (nightly) cargo run removed, so the
/// nested cargo that CMake calls builds the library as a user would.
fn clean(cmd: &str) -> Command {
    let mut c = Command::new(cmd);
    for (k, _) in env::vars_os() {
        let k = k.to_string_lossy().into_owned();
        let drop = k == "RUSTUP_TOOLCHAIN"
            || k == "RUSTFLAGS"
            || k == "RUSTDOCFLAGS"
            || k == "MAKEFLAGS"
            || k == "MFLAGS"
            || k == "TARGET"
            || k == "HOST"
            || k == "PROFILE"
            || k == "OUT_DIR"
            || k == "OPT_LEVEL"
            || k == "DEBUG"
            || k == "NUM_JOBS"
            || k.starts_with("RUSTC")
            || (k.starts_with("CARGO") && k != "CARGO_HOME");
        if drop {
            c.env_remove(&k);
        }
    }
    c
}

fn run(mut c: Command, what: &str) {
    let status = c
        .status()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e} (is cmake installed?)"));
    if !status.success() {
        panic!("{what} failed: {status}");
    }
}

fn main() {
    println!("cargo:rerun-if-env-changed=AXALLOC_LIB_DIR");
    println!("cargo:rerun-if-changed=build.rs");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let dir = match env::var_os("AXALLOC_LIB_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => {
            let repo = manifest.parent().expect("bench/ lives in the repository").to_path_buf();
            let build = manifest.join("target").join("axalloc-build");
            for p in ["src", "include", "Cargo.toml", "Cargo.lock", "build.rs", "CMakeLists.txt", "cmake"] {
                println!("cargo:rerun-if-changed={}", repo.join(p).display());
            }
            let mut cfg = clean("cmake");
            cfg.arg("-S").arg(&repo).arg("-B").arg(&build).args([
                "-DAXALLOC_BUILD_TESTS=OFF",
                "-DAXALLOC_BUILD_DEMO=OFF",
                "-DCMAKE_BUILD_TYPE=Release",
            ]);
            cfg.stdout(std::process::Stdio::null());
            run(cfg, "cmake configure of libaxalloc");
            let mut b = clean("cmake");
            b.arg("--build").arg(&build).args(["--target", "axalloc_cargo"]);
            run(b, "cmake --build of libaxalloc");
            build
        }
    };
    let lib = dir.join("libaxalloc.a");
    if !Path::new(&lib).is_file() {
        panic!("{} not found (set AXALLOC_LIB_DIR to a directory holding the shipped libaxalloc.a)", lib.display());
    }
    println!("cargo:rerun-if-changed={}", lib.display());

    // The KVM dirty-log peer (issue 12): plain C, the system compiler.
    let src = manifest.join("kvm_dirty.c");
    println!("cargo:rerun-if-changed={}", src.display());
    let out = PathBuf::from(env::var("OUT_DIR").unwrap());
    let obj = out.join("kvm_dirty.o");
    let mut cc = Command::new(env::var("CC").unwrap_or_else(|_| "cc".into()));
    cc.args(["-O2", "-Wall", "-Wextra", "-Werror", "-std=gnu11", "-c"]).arg(&src).arg("-o").arg(&obj);
    run(cc, "cc bench/kvm_dirty.c");
    let _ = std::fs::remove_file(out.join("libkvm_dirty.a"));
    let mut ar = Command::new("ar");
    ar.arg("crs").arg(out.join("libkvm_dirty.a")).arg(&obj);
    run(ar, "ar libkvm_dirty.a");
    println!("cargo:rustc-link-search=native={}", out.display());
    println!("cargo:rustc-link-lib=static=kvm_dirty");
    println!("cargo:rustc-link-search=native={}", dir.display());
    println!("cargo:rustc-link-lib=static=axalloc");
    println!("cargo:rustc-env=AXALLOC_ARCHIVE={}", lib.display());
}

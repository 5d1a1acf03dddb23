//! Regenerates `include/axalloc.h` from `src/capi.rs` with cbindgen (pinned).
//!
//! The header is committed. The build writes it to `$OUT_DIR` and refreshes
//! the committed copy; `cargo test` (`header_is_current`) and CTest
//! (`header_matches_git`) fail when the committed header and the source
//! disagree, so a drift cannot land unnoticed.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    println!("cargo:rerun-if-changed=src/capi.rs");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=include/axalloc.h");

    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable");
    let bindings = cbindgen::Builder::new()
        .with_config(config)
        .with_after_include(version_macros())
        // Only the boundary file: everything C sees is declared there.
        .with_src(crate_dir.join("src").join("capi.rs"))
        .generate()
        .expect("cbindgen generates the header");
    let mut raw = Vec::new();
    bindings.write(&mut raw);
    let text = unsigned_flag_literals(&String::from_utf8(raw).expect("cbindgen writes UTF-8"));
    let text = text.into_bytes();
    fs::write(out_dir.join("axalloc.h"), &text).expect("OUT_DIR is writable");

    let committed = crate_dir.join("include").join("axalloc.h");
    if fs::read(&committed).ok().as_deref() != Some(&text[..]) {
        // Refresh the committed copy (a source checkout may be read-only: the
        // tests then report the drift).
        if fs::write(&committed, &text).is_err() {
            println!("cargo:warning=include/axalloc.h is stale and could not be rewritten");
        }
    }
}

/// The header's version macros, from Cargo's package version (the same
/// numbers `axalloc_version()` returns, so neither can drift from
/// Cargo.toml). cbindgen cannot evaluate `env!`, so they are written here.
fn version_macros() -> String {
    let part = |name: &str| -> u32 {
        let v: u32 = env::var(name)
            .expect("set by cargo")
            .parse()
            .expect("a numeric version component");
        assert!(
            v < 256,
            "{name} = {v} does not fit AXALLOC_VERSION's 8 bits"
        );
        v
    };
    let (major, minor, patch) = (
        part("CARGO_PKG_VERSION_MAJOR"),
        part("CARGO_PKG_VERSION_MINOR"),
        part("CARGO_PKG_VERSION_PATCH"),
    );
    format!(
        "
/**
 * The version of this header (and of the archive built with it), from
 * Cargo.toml. Compare with axalloc_version() to check that the archive
 * linked is the one this header describes.
 */
#define AXALLOC_VERSION_MAJOR {major}u
#define AXALLOC_VERSION_MINOR {minor}u
#define AXALLOC_VERSION_PATCH {patch}u

/**
 * Encodes a version as one integer, comparable with < and >:
 * (major << 16) | (minor << 8) | patch, each part 0-255.
 */
#define AXALLOC_MAKE_VERSION(major, minor, patch) \\
  (((major) << 16) | ((minor) << 8) | (patch))

/**
 * This header's version, encoded by AXALLOC_MAKE_VERSION: usable in #if.
 */
#define AXALLOC_VERSION ((AXALLOC_VERSION_MAJOR << 16) | (AXALLOC_VERSION_MINOR << 8) | AXALLOC_VERSION_PATCH)
"
    )
}

/// cbindgen spells `1 << 0`; the C contract spells `1u << 0` (flag words are
/// `uint32_t`; an unsigned literal keeps `~AXALLOC_WRITE` and shifts into bit
/// 31 well-defined). Rewrites `#define AXALLOC_X N` and `(N << M)` values.
/// Status values (`AXALLOC_OK`, `AXALLOC_ERR_*`) are `int32_t`: they keep a
/// plain literal, negative ones in parentheses.
fn unsigned_flag_literals(header: &str) -> String {
    let mut out = String::with_capacity(header.len() + 64);
    for line in header.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let fixed = body.strip_prefix("#define AXALLOC_").and_then(|rest| {
            let (name, value) = rest.split_once(' ')?;
            if name == "OK" || name.starts_with("ERR_") {
                let digits = value.strip_prefix('-').unwrap_or(value);
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let value = if value.starts_with('-') {
                    format!("({value})")
                } else {
                    value.to_string()
                };
                return Some(format!("#define AXALLOC_{name} {value}"));
            }
            let value = if let Some(shift) = value.strip_prefix('(') {
                let (n, tail) = shift.split_once(" << ")?;
                n.bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| format!("({n}u << {tail}"))?
            } else {
                value
                    .bytes()
                    .all(|b| b.is_ascii_digit())
                    .then(|| format!("{value}u"))?
            };
            Some(format!("#define AXALLOC_{name} {value}"))
        });
        match fixed {
            Some(f) => {
                out.push_str(&f);
                out.push_str(&line[body.len()..]);
            }
            None => out.push_str(line),
        }
    }
    out
}

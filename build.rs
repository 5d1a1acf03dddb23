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

/// cbindgen spells `1 << 0`; the C contract spells `1u << 0` (flag words are
/// `uint32_t`; an unsigned literal keeps `~AXALLOC_WRITE` and shifts into bit
/// 31 well-defined). Rewrites `#define AXALLOC_X N` and `(N << M)` values.
fn unsigned_flag_literals(header: &str) -> String {
    let mut out = String::with_capacity(header.len() + 64);
    for line in header.split_inclusive('\n') {
        let body = line.trim_end_matches('\n');
        let fixed = body.strip_prefix("#define AXALLOC_").and_then(|rest| {
            let (name, value) = rest.split_once(' ')?;
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

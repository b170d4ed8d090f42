//! Link settings that make the shipped binary smaller (issue 33), and only
//! where the toolchain can honour them.
//!
//! * `--icf=all`: the linker folds functions whose machine code is identical.
//!   Generic code instantiated with types of the same layout is common in
//!   Arrow, DataFusion and delta-rs, and Rust promises nothing about function
//!   addresses being distinct. Only LLD has it; rustc links with its own LLD
//!   by default on x86_64-unknown-linux-gnu from 1.90.
//! * `-z pack-relative-relocs` (DT_RELR): a position-independent binary
//!   carries one relocation per pointer in its read-only data (vtables,
//!   string tables); RELR stores them as a bitmap instead of 24 bytes each.
//!   The dynamic loader must know it: glibc 2.36 and later, and the linker
//!   makes an older one refuse to start the binary with a clear message.
//!
//! Both only change the final link of the `tributary` binary, so they cost
//! no recompilation of dependencies. `TRIBUTARY_PLAIN_LINK=1` turns them off
//! (another linker, an older glibc on the machine that runs the binary).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TRIBUTARY_PLAIN_LINK");
    println!("cargo:rerun-if-env-changed=RUSTFLAGS");
    if std::env::var_os("TRIBUTARY_PLAIN_LINK").is_some_and(|v| v == "1") {
        return;
    }
    let target = std::env::var("TARGET").unwrap_or_default();
    let host = std::env::var("HOST").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" || target != host {
        return;
    }
    let flags = std::env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if flags.contains("linker") || flags.contains("fuse-ld") {
        return;
    }
    if rustc_minor().is_some_and(|minor| minor >= 90) {
        println!("cargo:rustc-link-arg-bin=tributary=-Wl,--icf=all");
        if glibc_minor().is_some_and(|minor| minor >= 36) {
            println!("cargo:rustc-link-arg-bin=tributary=-Wl,-z,pack-relative-relocs");
        }
    }
}

/// The minor version of the rustc that builds us ("rustc 1.95.0 (...)").
fn rustc_minor() -> Option<u32> {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("--version").output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    (parts.next()? == "1").then_some(())?;
    parts.next()?.parse().ok()
}

/// The minor version of this machine's glibc ("glibc 2.36").
fn glibc_minor() -> Option<u32> {
    let out = Command::new("getconf")
        .arg("GNU_LIBC_VERSION")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let version = text.split_whitespace().nth(1)?;
    let mut parts = version.split('.');
    (parts.next()? == "2").then_some(())?;
    parts.next()?.parse().ok()
}

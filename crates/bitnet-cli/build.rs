//! Links `bitnet-onnx` with packed relative relocations (`-z pack-relative-relocs`, DT_RELR)
//! when the toolchain and the C library of the build machine support them.
//!
//! The binary is position-independent and links tract for `verify`: it carries about 70,000
//! relative relocations. As plain RELA entries they fill a 1.6 MB `.rela.dyn` that the dynamic
//! loader reads at every start, so every command, `bitnet-onnx --version` included, began with
//! about 1.5 MiB more resident memory (7.2 against 5.7 MiB, `/usr/bin/time -f %M`). DT_RELR
//! packs them into about 16 KB.
//!
//! DT_RELR needs glibc 2.36 or newer at run time, and a linker that knows the option (GNU ld
//! 2.38, lld 15). The probe links and runs a tiny C program with the option using the same
//! linker driver, on the build machine only: when anything fails or the linker warns, the
//! option is left out and the binary is linked as before.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const FLAG: &str = "-Wl,-z,pack-relative-relocs";

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    let target = env::var("TARGET").unwrap_or_default();
    let host = env::var("HOST").unwrap_or_default();
    if target != host || !target.ends_with("-linux-gnu") {
        return;
    }
    if links_and_runs() {
        println!("cargo:rustc-link-arg-bins={FLAG}");
    }
}

/// True when `cc` (or the configured linker driver) links a program with `FLAG` without a
/// warning and the program runs here.
fn links_and_runs() -> bool {
    let Some(dir) = env::var_os("OUT_DIR").map(PathBuf::from) else {
        return false;
    };
    let src = dir.join("relr_probe.c");
    let exe = dir.join("relr_probe");
    if std::fs::write(&src, "int main(void) { return 0; }\n").is_err() {
        return false;
    }
    let cc = env::var("RUSTC_LINKER").unwrap_or_else(|_| "cc".to_string());
    let linked = Command::new(&cc)
        .args(["-pie", "-fPIE", FLAG, "-o"])
        .arg(&exe)
        .arg(&src)
        .output();
    match linked {
        Ok(out) if out.status.success() && out.stderr.is_empty() => {
            Command::new(&exe).status().is_ok_and(|s| s.success())
        }
        _ => false,
    }
}

//! Link layout of release builds of `nsm` (see `layout/README.md` and BENCHMARKS.md, issue 8).
//!
//! Every component is this one executable, and the kernel maps its code into a process in 64 KiB
//! windows around each page the process runs. With the default layout the few thousand functions an
//! NSMgr runs are spread over the whole 14 MB of code, so it maps most of it. Release builds therefore
//! link with `layout/hot-text.ld`, which places the functions measured as run by the components
//! first, together, and with packed relative relocations (`-z pack-relative-relocs`: the loader
//! reads a few KiB of relocations at start-up instead of ~460 KiB). Dev and test builds link as
//! usual. `NSM_DEFAULT_LAYOUT=1` turns both off (for a linker without `INSERT` or RELR support).

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=layout/hot-text.ld");
    println!("cargo:rerun-if-env-changed=NSM_DEFAULT_LAYOUT");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let linux_gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    let opted_out = !var("NSM_DEFAULT_LAYOUT").is_empty() && var("NSM_DEFAULT_LAYOUT") != "0";
    if !release || !linux_gnu || opted_out {
        return;
    }
    let script = format!("{}/layout/hot-text.ld", var("CARGO_MANIFEST_DIR"));
    println!("cargo:rustc-link-arg-bin=nsm=-Wl,-T,{script}");
    println!("cargo:rustc-link-arg-bin=nsm=-Wl,-z,pack-relative-relocs");
}

//! Link layout of release builds of `nsm` (see `layout/README.md` and BENCHMARKS.md, issue 8).
//!
//! Every component is this one executable, and the kernel maps its code into a process in 64 KiB
//! windows around each page the process runs. With the default layout the few thousand functions an
//! NSMgr runs are spread over the whole 14 MB of code, so it maps most of it. Release builds therefore
//! link with `layout/hot-text.ld`, which places the functions measured as run by the components
//! first, together, and with packed relative relocations (`-z pack-relative-relocs`: the loader
//! reads a few KiB of relocations at start-up instead of ~460 KiB).
//!
//! Release builds are also linked as static PIEs against glibc's archives. A dynamically linked
//! component maps libc, libm, libgcc_s and the loader, ~2 MiB of pages that every process on the
//! machine keeps cached, for the few dozen functions it calls; linked in, those functions cost what
//! they use. rustc links statically only with `-C target-feature=+crt-static`, which cargo can give
//! the final binary alone only through `--target` (proc macros cannot be built with it). So the
//! link keeps rustc's arguments and adds `-static-pie`, and `-lgcc_s`, `-lc`, `-lm`, … resolve
//! through a directory of this build whose `lib*.so` names are links to the static archives
//! (`libgcc_s` to `libgcc_eh`, as with `crt-static`). ASLR stays (position-independent).
//!
//! Dev and test builds link as usual. `NSM_DEFAULT_LAYOUT=1` turns all of this off (for a linker
//! without `INSERT` or RELR support, a system without glibc's static archives, or to compare).
//! `layout/generate.sh` links with another script (`NSM_LAYOUT_SCRIPT`) and asks for the linker's
//! map (`NSM_LAYOUT_MAP`).

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The libraries rustc names for the standard library on linux-gnu, with the archive each one
/// resolves to in a static link.
const STATIC_LIBS: &[(&str, &str)] = &[
    ("gcc_s", "libgcc_eh.a"),
    ("c", "libc.a"),
    ("m", "libm.a"),
    ("pthread", "libpthread.a"),
    ("dl", "libdl.a"),
    ("rt", "librt.a"),
    ("util", "libutil.a"),
];

fn main() {
    println!("cargo:rerun-if-changed=layout/hot-text.ld");
    println!("cargo:rerun-if-env-changed=NSM_DEFAULT_LAYOUT");
    println!("cargo:rerun-if-env-changed=CC");
    println!("cargo:rerun-if-env-changed=NSM_LAYOUT_SCRIPT");
    println!("cargo:rerun-if-env-changed=NSM_LAYOUT_MAP");
    let var = |k: &str| env::var(k).unwrap_or_default();
    let release = var("PROFILE") == "release";
    let linux_gnu = var("CARGO_CFG_TARGET_OS") == "linux" && var("CARGO_CFG_TARGET_ENV") == "gnu";
    let opted_out = !var("NSM_DEFAULT_LAYOUT").is_empty() && var("NSM_DEFAULT_LAYOUT") != "0";
    if !release || !linux_gnu || opted_out {
        return;
    }
    let script = match var("NSM_LAYOUT_SCRIPT") {
        s if s.is_empty() => format!("{}/layout/hot-text.ld", var("CARGO_MANIFEST_DIR")),
        s => {
            println!("cargo:rerun-if-changed={s}");
            s
        }
    };
    println!("cargo:rustc-link-arg-bin=nsm=-Wl,-T,{script}");
    if let Ok(map) = env::var("NSM_LAYOUT_MAP") {
        println!("cargo:rustc-link-arg-bin=nsm=-Wl,-Map={map}");
    }
    println!("cargo:rustc-link-arg-bin=nsm=-Wl,-z,pack-relative-relocs");
    if var("TARGET") != var("HOST") {
        // The archives found through `cc` would be the host's.
        println!("cargo:warning=nsm is linked dynamically: cross build");
        return;
    }
    let out = PathBuf::from(var("OUT_DIR")).join("static-libs");
    match static_lib_dir(&out) {
        Ok(()) => {
            println!("cargo:rustc-link-arg-bin=nsm=-L{}", out.display());
            println!("cargo:rustc-link-arg-bin=nsm=-static-pie");
        }
        Err(why) => println!("cargo:warning=nsm is linked dynamically: {why}"),
    }
}

/// Fills `dir` with `lib<name>.so` links to the static archives (see the module docs).
fn static_lib_dir(dir: &Path) -> Result<(), String> {
    let cc = env::var("CC").unwrap_or_else(|_| "cc".into());
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for (name, archive) in STATIC_LIBS {
        let found = Command::new(&cc)
            .arg(format!("-print-file-name={archive}"))
            .output()
            .map_err(|e| format!("{cc} -print-file-name: {e}"))?;
        let path = PathBuf::from(String::from_utf8_lossy(&found.stdout).trim());
        // The compiler prints the bare name when it does not find the file.
        if !path.is_absolute() || !path.exists() {
            return Err(format!("{cc} finds no {archive} (install libc6-dev)"));
        }
        let link = dir.join(format!("lib{name}.so"));
        std::os::unix::fs::symlink(&path, &link).map_err(|e| format!("{}: {e}", link.display()))?;
        println!("cargo:rerun-if-changed={}", path.display());
    }
    Ok(())
}

//! A development CA made and used through `nsm identity` (the executable under test): `init` creates
//! it, `issue` gives a component its own SVID directory for `NSM_IDENTITY_DIR`.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// A development CA in `dir`, trust domain `trust_domain`, driven by `nsm_bin`.
#[derive(Debug, Clone)]
pub struct DevCa {
    nsm_bin: PathBuf,
    dir: PathBuf,
    trust_domain: String,
}

impl DevCa {
    /// Creates the CA (`nsm identity init`) in `dir`.
    pub fn init(nsm_bin: &Path, dir: &Path, trust_domain: &str) -> io::Result<Self> {
        let ca = Self {
            nsm_bin: nsm_bin.to_path_buf(),
            dir: dir.to_path_buf(),
            trust_domain: trust_domain.to_string(),
        };
        ca.run(
            "nsm identity init",
            Command::new(nsm_bin)
                .args(["identity", "init", "--trust-domain", trust_domain, "--dir"])
                .arg(dir),
        )?;
        Ok(ca)
    }

    /// Issues `spiffe://<trust domain>/<name>` (24 h) into `<dir>/svids/<name>`; returns that
    /// directory (the component's `NSM_IDENTITY_DIR`).
    pub fn issue(&self, name: &str) -> io::Result<PathBuf> {
        let out_dir = self.dir.join("svids").join(name);
        self.run(
            &format!("nsm identity issue for {name}"),
            Command::new(&self.nsm_bin)
                .args(["identity", "issue", "--ttl", "24h", "--dir"])
                .arg(&self.dir)
                .arg("--spiffe-id")
                .arg(format!("spiffe://{}/{name}", self.trust_domain))
                .arg("--out")
                .arg(&out_dir),
        )?;
        Ok(out_dir)
    }

    fn run(&self, what: &str, cmd: &mut Command) -> io::Result<()> {
        let out = cmd.output()?;
        if out.status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "{what}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }
}

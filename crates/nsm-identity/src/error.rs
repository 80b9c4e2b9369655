//! Errors of identity sources, TLS setup and token signing.

/// Why an identity could not be obtained or used.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// A certificate or key could not be parsed or is not a valid X.509-SVID.
    #[error("invalid SVID: {0}")]
    InvalidSvid(String),
    /// The trust bundle is empty or unparsable.
    #[error("invalid trust bundle: {0}")]
    InvalidBundle(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// What went wrong.
        source: std::io::Error,
    },
    /// Certificate issuance failed.
    #[error("cannot issue a certificate: {0}")]
    Issue(String),
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The SPIFFE Workload API failed.
    #[error("SPIFFE Workload API: {0}")]
    WorkloadApi(String),
    /// No identity is configured (and plaintext was not asked for).
    #[error("{0}")]
    NoIdentity(String),
    /// A setting has a bad value.
    #[error("{0}")]
    Config(String),
}

impl IdentityError {
    pub(crate) fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }
}

//! Typed errors of chain elements and their one mapping to `tonic::Status`.
//!
//! Every variant names the element that failed, so a user reading a gRPC status sees where and why
//! (`discoverforwarder: no forwarder matches labels {p2p=true} (candidates: fwd-a (mechanism
//! unsupported), …)`) instead of Go's long concatenated strings.

use std::fmt;

use tonic::{Code, Status};

/// The result type of chain elements.
pub type Result<T, E = NsmError> = std::result::Result<T, E>;

/// One candidate (forwarder, endpoint, URL) that was tried and why it failed.
#[derive(Debug, Clone)]
pub struct CandidateFailure {
    /// Candidate name (NSE name or URL).
    pub name: String,
    /// Why it failed.
    pub error: Box<NsmError>,
}

impl fmt::Display for CandidateFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name, self.error)
    }
}

fn list(c: &[CandidateFailure]) -> String {
    c.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// An error raised by a chain element.
#[derive(Debug, Clone, thiserror::Error)]
pub enum NsmError {
    /// The request is malformed (no service, bad path, bad parameter…).
    #[error("{element}: invalid argument: {reason}")]
    InvalidArgument {
        /// Element that refused.
        element: &'static str,
        /// What was wrong.
        reason: String,
    },
    /// Something the request names does not exist (service, endpoint, forwarder).
    #[error("{element}: not found: {what}")]
    NotFound {
        /// Element that looked.
        element: &'static str,
        /// What was missing.
        what: String,
    },
    /// A pool (IPAM, VNI…) has nothing left.
    #[error("{element}: resource exhausted: {what}")]
    ResourceExhausted {
        /// Element whose pool is empty.
        element: &'static str,
        /// Which pool.
        what: String,
    },
    /// A peer cannot be reached or is not serving.
    #[error("{element}: unavailable: {reason}")]
    Unavailable {
        /// Element that tried.
        element: &'static str,
        /// What happened.
        reason: String,
    },
    /// Every candidate was tried and none worked.
    #[error("{element}: all {} candidates failed for {what}: {}", candidates.len(), list(candidates))]
    AllCandidatesFailed {
        /// Selecting element.
        element: &'static str,
        /// What was being selected ("forwarder for icmp-responder").
        what: String,
        /// Each candidate and its failure, in the order tried.
        candidates: Vec<CandidateFailure>,
    },
    /// The deadline of the call passed.
    #[error("{element}: deadline exceeded{}", if detail.is_empty() { String::new() } else { format!(": {detail}") })]
    DeadlineExceeded {
        /// Element that noticed.
        element: &'static str,
        /// What was running.
        detail: String,
    },
    /// A policy refused the call.
    #[error("{element}: permission denied: {reason}")]
    PermissionDenied {
        /// Element that refused.
        element: &'static str,
        /// Which policy and why.
        reason: String,
    },
    /// The call was cancelled (connection closed, process stopping).
    #[error("{element}: cancelled")]
    Cancelled {
        /// Element that noticed.
        element: &'static str,
    },
    /// A next hop answered with an error; its code is kept.
    #[error("{element}: {target}: {}", status.message())]
    Remote {
        /// Element that made the call.
        element: &'static str,
        /// The hop called (URL or name).
        target: String,
        /// What it answered.
        status: Status,
    },
    /// A bug or an impossible state.
    #[error("{element}: internal error: {reason}")]
    Internal {
        /// Element that failed.
        element: &'static str,
        /// What happened.
        reason: String,
    },
}

impl NsmError {
    /// Shorthand for [`NsmError::InvalidArgument`].
    pub fn invalid(element: &'static str, reason: impl Into<String>) -> Self {
        Self::InvalidArgument {
            element,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`NsmError::NotFound`].
    pub fn not_found(element: &'static str, what: impl Into<String>) -> Self {
        Self::NotFound {
            element,
            what: what.into(),
        }
    }

    /// Shorthand for [`NsmError::Unavailable`].
    pub fn unavailable(element: &'static str, reason: impl Into<String>) -> Self {
        Self::Unavailable {
            element,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`NsmError::Internal`].
    pub fn internal(element: &'static str, reason: impl Into<String>) -> Self {
        Self::Internal {
            element,
            reason: reason.into(),
        }
    }

    /// Shorthand for [`NsmError::DeadlineExceeded`].
    pub fn deadline(element: &'static str, detail: impl Into<String>) -> Self {
        Self::DeadlineExceeded {
            element,
            detail: detail.into(),
        }
    }

    /// The gRPC code this error maps to.
    pub fn code(&self) -> Code {
        match self {
            Self::InvalidArgument { .. } => Code::InvalidArgument,
            Self::NotFound { .. } => Code::NotFound,
            Self::ResourceExhausted { .. } => Code::ResourceExhausted,
            Self::Unavailable { .. } => Code::Unavailable,
            Self::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Self::PermissionDenied { .. } => Code::PermissionDenied,
            Self::Cancelled { .. } => Code::Cancelled,
            Self::Remote { status, .. } => status.code(),
            Self::Internal { .. } => Code::Internal,
            Self::AllCandidatesFailed { candidates, .. } => {
                // One shared cause keeps its code (all endpoints exhausted → ResourceExhausted);
                // mixed causes mean "nothing usable right now".
                let mut codes = candidates.iter().map(|c| c.error.code());
                match codes.next() {
                    Some(first) if codes.all(|c| c == first) => first,
                    _ => Code::Unavailable,
                }
            }
        }
    }

    /// Turns a status received from a next hop into an error that keeps its code.
    pub fn remote(element: &'static str, target: impl Into<String>, status: Status) -> Self {
        Self::Remote {
            element,
            target: target.into(),
            status,
        }
    }

    /// True if the error means the call ran out of time.
    pub fn is_deadline(&self) -> bool {
        self.code() == Code::DeadlineExceeded
    }
}

impl From<NsmError> for Status {
    fn from(e: NsmError) -> Self {
        Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_keeps_element_and_cause() {
        let s: Status = NsmError::not_found("discover", "network service \"nope\"").into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "discover: not found: network service \"nope\"");
    }

    #[test]
    fn candidate_failures_are_all_listed() {
        let e = NsmError::AllCandidatesFailed {
            element: "roundrobin",
            what: "endpoint for icmp".into(),
            candidates: vec![
                CandidateFailure {
                    name: "nse-a".into(),
                    error: Box::new(NsmError::unavailable("connect", "connection refused")),
                },
                CandidateFailure {
                    name: "nse-b".into(),
                    error: Box::new(NsmError::deadline("connect", "dial")),
                },
            ],
        };
        let msg = e.to_string();
        assert!(
            msg.contains("nse-a (connect: unavailable: connection refused)"),
            "{msg}"
        );
        assert!(
            msg.contains("nse-b (connect: deadline exceeded: dial)"),
            "{msg}"
        );
        assert_eq!(e.code(), Code::Unavailable);
    }
}

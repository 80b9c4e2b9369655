//! What a [`JwtTokenGenerator`](super::JwtTokenGenerator) remembers between calls: the tokens it
//! signed in the current second of `exp`, and the NotAfter of peer certificates.
//!
//! A token's claims are `sub`, `aud` and `exp` in whole seconds, so two tokens signed for the same
//! peer with the same SVID within one second of `exp` carry byte-identical claims; only the ECDSA
//! signature (randomized) differs. Handing out the first one again is indistinguishable for a
//! verifier (Go's policies check the signature, the chain and `exp`; nothing checks uniqueness) and
//! saves a signature here and a signature check at the peer, whose verification cache then knows
//! the token. A rotation of the generator's SVID forgets everything. Both lists are short and
//! bounded: entries for an older `exp` are dropped as soon as a newer one is stored.

use std::sync::Arc;
use std::time::SystemTime;

use crate::{Svid, parse_certs_pem, spiffe_id_of};

/// Tokens kept (one per signer and audience in the current second; a hop has few peers).
const MAX_TOKENS: usize = 64;
/// Peer certificates whose NotAfter is kept.
const MAX_PEERS: usize = 64;

struct Recent {
    signer_pem: String,
    audience: Option<String>,
    exp: u64,
    token: String,
}

/// The generator's memory; see the module documentation.
pub(super) struct RecentTokens {
    /// The SVID that was current when the tokens were stored.
    current: Option<Arc<Svid>>,
    tokens: Vec<Recent>,
    peers: Vec<(String, Option<SystemTime>)>,
}

impl RecentTokens {
    pub(super) fn new() -> Self {
        Self {
            current: None,
            tokens: Vec::new(),
            peers: Vec::new(),
        }
    }

    /// Forgets every token when the generator's current SVID is not the one they were stored under.
    fn follow(&mut self, current: &Arc<Svid>) {
        if !self
            .current
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, current))
        {
            self.tokens.clear();
            self.current = Some(current.clone());
        }
    }

    /// The token `signer` issued for `audience` with this `exp`, if it is still remembered.
    pub(super) fn find(
        &mut self,
        current: &Arc<Svid>,
        signer: &Svid,
        audience: Option<&str>,
        exp: u64,
    ) -> Option<String> {
        self.follow(current);
        self.tokens
            .iter()
            .find(|r| {
                r.exp == exp
                    && r.audience.as_deref() == audience
                    && r.signer_pem == signer.leaf_pem()
            })
            .map(|r| r.token.clone())
    }

    /// Remembers a token just signed.
    pub(super) fn store(
        &mut self,
        current: &Arc<Svid>,
        signer: &Svid,
        audience: Option<&str>,
        exp: u64,
        token: &str,
    ) {
        self.follow(current);
        self.tokens.retain(|r| r.exp >= exp);
        if self.tokens.len() >= MAX_TOKENS {
            self.tokens.remove(0);
        }
        self.tokens.push(Recent {
            signer_pem: signer.leaf_pem().to_string(),
            audience: audience.map(str::to_string),
            exp,
            token: token.to_string(),
        });
    }

    /// How many tokens are remembered.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.tokens.len()
    }

    /// The NotAfter of the first certificate in `pem` (parsed once per certificate).
    pub(super) fn peer_not_after(&mut self, pem: &str) -> Option<SystemTime> {
        if let Some((_, t)) = self.peers.iter().find(|(p, _)| p == pem) {
            return *t;
        }
        let t = parse_certs_pem(pem.as_bytes())
            .ok()
            .and_then(|c| c.into_iter().next())
            .and_then(|der| spiffe_id_of(&der).ok())
            .map(|(_, t)| t);
        if self.peers.len() >= MAX_PEERS {
            self.peers.remove(0);
        }
        self.peers.push((pem.to_string(), t));
        t
    }
}

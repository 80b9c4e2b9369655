//! A message kept in its wire form, for per-connection state held as long as a connection lives.
//!
//! `begin` keeps the last request of every live connection and the `monitor` hub its connection, but
//! they read them only on rarer paths (Close, events, a re-request's merge, a passthrough update, a new
//! subscriber). Decoded, a connection is a ~550-byte struct plus one allocation per string and map
//! entry; encoded it is one allocation of about half the size, for one encode per store and one decode
//! per read.

use std::marker::PhantomData;

use nsm_core::{NsmError, Result};

/// `T` encoded.
pub(crate) struct Encoded<T> {
    bytes: Box<[u8]>,
    _kind: PhantomData<fn() -> T>,
}

impl<T> Clone for Encoded<T> {
    fn clone(&self) -> Self {
        Self {
            bytes: self.bytes.clone(),
            _kind: PhantomData,
        }
    }
}

impl<T: prost::Message + Default> Encoded<T> {
    pub(crate) fn new(msg: &T) -> Self {
        Self {
            bytes: msg.encode_to_vec().into_boxed_slice(),
            _kind: PhantomData,
        }
    }

    /// Wraps bytes that are an encoding of a `T` (what `decode` will read back).
    pub(crate) fn from_encoding(bytes: Vec<u8>) -> Self {
        Self {
            bytes: bytes.into_boxed_slice(),
            _kind: PhantomData,
        }
    }

    /// The message back, or an internal error naming `element`. (Only bytes `new` produced are ever
    /// decoded, so this fails only on a bug.)
    pub(crate) fn decode(&self, element: &'static str) -> Result<T> {
        T::decode(&*self.bytes)
            .map_err(|e| NsmError::internal(element, format!("stored state does not decode: {e}")))
    }
}

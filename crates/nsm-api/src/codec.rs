//! The gRPC codec of every generated client and server: prost encoding, as tonic's default, with
//! per-call buffers sized for NSM messages.
//!
//! tonic starts every call's encode and decode buffer at 8 KiB; a unary NSM call has four of them
//! (encode and decode on both ends) for messages of a few hundred bytes to a few KiB. Blocks that
//! large miss the allocator's fast paths (glibc's per-thread cache stops at ~1 KiB), and a
//! Request+Close through four hops makes 24 of them. Starting at 1 KiB keeps them on the fast path;
//! a larger message grows its buffer as it is written. The bytes on the wire are the same.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

/// Initial capacity of a call's encode and decode buffer.
pub const BUFFER_SIZE: usize = 1024;
/// tonic's default: yield to the runtime after encoding this many bytes of a stream.
const YIELD_THRESHOLD: usize = 32 * 1024;

/// [`ProstCodec`] with [`BUFFER_SIZE`] buffers (`codec_path` of the generated code).
#[derive(Debug)]
pub struct NsmCodec<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Default for NsmCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(BUFFER_SIZE, YIELD_THRESHOLD)
}

impl<T, U> Codec for NsmCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

//! The codec every generated client and server uses: prost's, with buffers sized for the
//! messages these protocols carry. tonic's default gives every call an 8 KiB encode
//! buffer and an 8 KiB decode buffer; glibc serves blocks that large outside its
//! per-thread caches, through the arena's bins and `malloc_consolidate` (about 2 % of
//! the members' CPU under 64 clients' puts, docs/PERFORMANCE.md). Most calls carry a
//! few hundred bytes each way; a larger message reserves what it needs at once.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder, ProstCodec};
use tonic::Status;

/// A call's first buffer: within glibc's per-thread cache (blocks up to 1,032 bytes).
pub const CALL_BUFFER_BYTES: usize = 1024;
/// tonic's default: a stream's encoder hands its buffer over once it holds this much.
const YIELD_THRESHOLD_BYTES: usize = 32 * 1024;

fn buffer_settings() -> BufferSettings {
    BufferSettings::new(CALL_BUFFER_BYTES, YIELD_THRESHOLD_BYTES)
}

/// prost's encoding with small first buffers (the generated code names it by path).
#[derive(Debug, Clone)]
pub struct SmallBufferCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for SmallBufferCodec<T, U> {
    fn default() -> Self {
        SmallBufferCodec(PhantomData)
    }
}

impl<T, U> Codec for SmallBufferCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ReservingEncoder<T>;
    type Decoder = <ProstCodec<T, U> as Codec>::Decoder;

    fn encoder(&mut self) -> Self::Encoder {
        ReservingEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffer_settings())
    }
}

/// prost's encoder that reserves a message's whole length before writing it, so a
/// message larger than the first buffer grows it once rather than by doubling.
#[derive(Debug, Clone)]
pub struct ReservingEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ReservingEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        // `encode_raw` is what `Message::encode` calls after measuring the message; the
        // length measured here once (a walk over every key-value of a large range's
        // answer) is not measured again.
        buf.reserve(item.encoded_len());
        item.encode_raw(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        buffer_settings()
    }
}

//! The protobuf codec of `vidgate.v1`: tonic-prost's, except that a message which does not
//! decode (malformed protobuf, invalid UTF-8 in a string field) is the caller's
//! `INVALID_ARGUMENT` (`MALFORMED_MESSAGE`, naming the cause), not tonic's `INTERNAL`.
//!
//! `build.rs` names it as the generated service's codec (`codec_path`), so every RPC of
//! `VideoService`, and the generated client the CLI uses, decode through it.

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

use super::error::ApiError;

/// [`ProstCodec`] with decode failures mapped through [`ApiError::MalformedMessage`].
#[derive(Debug, Clone)]
pub struct ProtoCodec<T, U>(ProstCodec<T, U>);

impl<T, U> Default for ProtoCodec<T, U> {
    fn default() -> Self {
        Self(ProstCodec::default())
    }
}

impl<T, U> Codec for ProtoCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProtoDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        self.0.encoder()
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProtoDecoder(self.0.decoder())
    }
}

/// [`ProstDecoder`] whose only failure, a message that does not decode, is the sender's.
#[derive(Debug, Clone)]
pub struct ProtoDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for ProtoDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // prost's message names the message and field and what was wrong with it, e.g.
        // `failed to decode Protobuf message: GetVideoRequest.id: invalid string value: data
        // is not UTF-8 encoded`; ProstDecoder fails for nothing else.
        self.0
            .decode(buf)
            .map_err(|status| ApiError::MalformedMessage(status.message().to_owned()).into())
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

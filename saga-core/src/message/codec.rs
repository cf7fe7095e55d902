use serde::{Serialize, de::DeserializeOwned};

/// Why a payload could not be encoded or decoded.
#[derive(Debug, Clone, thiserror::Error)]
pub enum CodecError {
    /// The value could not be serialized.
    #[error("cannot encode {type_name}: {reason}")]
    Encode {
        /// The Rust type being encoded.
        type_name: &'static str,
        /// The serializer's error.
        reason: String,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode {type_name}: {reason} (check the producer's schema and the content-type header)")]
    Decode {
        /// The Rust type expected.
        type_name: &'static str,
        /// The deserializer's error.
        reason: String,
    },
}

/// Turns messages and saga state into bytes and back.
///
/// The trait is object safe (serde is reached through `erased_serde`), so a runtime holds one
/// `Arc<dyn Codec>` chosen at build time and every saga and handler registered on it uses it.
/// Call the typed helpers of [`CodecExt`]; implement only the two erased methods.
/// [`JsonCodec`] is the default and the wire format of the eShop reference system.
///
/// ```
/// use saga_core::message::{Codec, CodecExt, JsonCodec};
/// let codec: &dyn Codec = &JsonCodec;
/// let bytes = codec.encode(&vec![1, 2, 3]).unwrap();
/// let back: Vec<i32> = codec.decode(&bytes).unwrap();
/// assert_eq!(back, vec![1, 2, 3]);
/// assert_eq!(codec.content_type(), "application/json");
/// ```
pub trait Codec: Send + Sync + 'static {
    /// The MIME type written into the `content-type` header of every envelope.
    fn content_type(&self) -> &'static str;

    /// Serializes a value.
    fn encode_erased(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, String>;

    /// Runs `visit` on a deserializer over `bytes`, then checks nothing is left over.
    fn decode_erased(
        &self,
        bytes: &[u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
    ) -> Result<(), String>;
}

/// Typed encoding and decoding through any [`Codec`].
pub trait CodecExt {
    /// Serializes a value.
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError>;
    /// Deserializes a value.
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError>;
}

impl<C: Codec + ?Sized> CodecExt for C {
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        self.encode_erased(value).map_err(|reason| CodecError::Encode { type_name: std::any::type_name::<T>(), reason })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let mut out = None;
        let fail = |reason| CodecError::Decode { type_name: std::any::type_name::<T>(), reason };
        self.decode_erased(bytes, &mut |de| {
            out = Some(erased_serde::deserialize::<T>(de)?);
            Ok(())
        })
        .map_err(fail)?;
        out.ok_or_else(|| fail("the codec produced no value".into()))
    }
}

/// The default codec: JSON through `serde_json`.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonCodec;

impl Codec for JsonCodec {
    fn content_type(&self) -> &'static str {
        "application/json"
    }

    fn encode_erased(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, String> {
        serde_json::to_vec(value).map_err(|e| e.to_string())
    }

    fn decode_erased(
        &self,
        bytes: &[u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
    ) -> Result<(), String> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de)).map_err(|e| e.to_string())?;
        de.end().map_err(|e| e.to_string())
    }
}

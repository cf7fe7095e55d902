use serde::{Serialize, de::DeserializeOwned};

/// What a [`Codec`] reports when it cannot encode or decode: its own error, kept as the cause.
pub type CodecFailure = Box<dyn std::error::Error + Send + Sync>;

/// Why a payload could not be encoded or decoded. The codec's error is the
/// [`source`](std::error::Error::source), and its text is part of the message too.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CodecError {
    /// The value could not be serialized.
    #[error("cannot encode {type_name}: {source}")]
    Encode {
        /// The Rust type being encoded.
        type_name: &'static str,
        /// The serializer's error.
        #[source]
        source: CodecFailure,
    },
    /// The bytes are not a valid encoding of the expected type.
    #[error("cannot decode {type_name}: {source} (check the producer's schema and the content-type header)")]
    Decode {
        /// The Rust type expected.
        type_name: &'static str,
        /// The deserializer's error.
        #[source]
        source: CodecFailure,
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
    fn encode_erased(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecFailure>;

    /// Runs `visit` on a deserializer over `bytes`, then checks nothing is left over.
    fn decode_erased(
        &self,
        bytes: &[u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
    ) -> Result<(), CodecFailure>;
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
        self.encode_erased(value).map_err(|source| CodecError::Encode { type_name: std::any::type_name::<T>(), source })
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        let mut out = None;
        let fail = |source| CodecError::Decode { type_name: std::any::type_name::<T>(), source };
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

    fn encode_erased(&self, value: &dyn erased_serde::Serialize) -> Result<Vec<u8>, CodecFailure> {
        Ok(serde_json::to_vec(value)?)
    }

    fn decode_erased(
        &self,
        bytes: &[u8],
        visit: &mut dyn FnMut(&mut dyn erased_serde::Deserializer<'_>) -> Result<(), erased_serde::Error>,
    ) -> Result<(), CodecFailure> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        visit(&mut <dyn erased_serde::Deserializer>::erase(&mut de))?;
        Ok(de.end()?)
    }
}

#[cfg(test)]
mod tests {
    use std::error::Error as _;

    use super::*;

    #[test]
    fn a_decode_error_keeps_the_codecs_error_as_its_source_and_names_the_type() {
        let error = JsonCodec.decode::<Vec<u32>>(b"[1, \"two\"]").unwrap_err();
        assert!(matches!(error, CodecError::Decode { type_name, .. } if type_name.contains("Vec<u32>")));
        // The value's error comes through erased_serde, which carries serde_json's message.
        let source = error.source().expect("the codec's error is the source");
        assert!(source.downcast_ref::<erased_serde::Error>().is_some(), "{source:?}");
        assert!(source.to_string().contains("invalid type: string \"two\""), "{source}");
        assert!(error.to_string().contains(&source.to_string()), "{error}");
    }

    #[test]
    fn trailing_bytes_after_a_value_are_a_decode_error() {
        let error = JsonCodec.decode::<u32>(b"1 2").unwrap_err();
        assert!(error.source().is_some_and(|s| s.downcast_ref::<serde_json::Error>().is_some()));
    }
}

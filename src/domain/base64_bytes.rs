//! Bytes as a base64 string in serde forms (`#[serde(with = "base64_bytes")]`): an image in
//! JSON is a string a third larger, never an array of numbers four times larger.

use base64::Engine as _;
use bytes::Bytes;
use serde::{Deserializer, Serializer};

const ENGINE: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub(crate) fn serialize<S: Serializer>(data: &Bytes, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&ENGINE.encode(data))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Bytes, D::Error> {
    deserializer.deserialize_str(Base64Visitor)
}

/// Decodes the string where the deserializer holds it (borrowed from the input when it can),
/// so a large image is not copied into an intermediate `String` first.
struct Base64Visitor;

impl serde::de::Visitor<'_> for Base64Visitor {
    type Value = Bytes;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a base64 string")
    }

    fn visit_str<E: serde::de::Error>(self, text: &str) -> Result<Bytes, E> {
        ENGINE
            .decode(text)
            .map(Bytes::from)
            .map_err(|e| E::custom(format!("not base64: {e}")))
    }
}

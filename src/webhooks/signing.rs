//! The Standard Webhooks scheme (<https://www.standardwebhooks.com/>), so that receivers verify
//! vidgate's webhooks with the scheme's official library in their language:
//!
//! - `webhook-id`: the message's id, stable per (event, endpoint), so a receiver drops
//!   duplicates ([`super::webhook_id`]);
//! - `webhook-timestamp`: Unix seconds of this attempt;
//! - `webhook-signature`: `v1,<base64 of HMAC-SHA256(secret, "<id>.<timestamp>.<body>")>`, one
//!   per secret in force, separated by spaces (during a rotation's grace period, the new and
//!   the old secret both sign, and either verifies).
//!
//! Secrets are `whsec_` + base64 of 32 random bytes. The HMAC is the `standardwebhooks` crate's
//! (the scheme's own Rust library); this module generates secrets, checks them, and never
//! lets one reach a `Debug` line.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use rand::Rng as _;

/// What every secret starts with.
pub const SECRET_PREFIX: &str = "whsec_";
/// Random bytes in a generated secret.
const SECRET_BYTES: usize = 32;
/// The key sizes accepted from outside (the scheme: 24 to 64 bytes).
const MIN_SECRET_BYTES: usize = 24;
const MAX_SECRET_BYTES: usize = 64;

/// Why a secret or a signature could not be had.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigningError {
    /// A secret that is not `whsec_` + base64 of 24 to 64 bytes.
    #[error("a webhook signing secret is \"whsec_\" followed by the base64 of 24 to 64 bytes; {0}")]
    BadSecret(String),
    /// The body to sign is not UTF-8 text (the scheme signs text).
    #[error("a webhook body must be UTF-8 text (JSON)")]
    BodyNotText,
    /// No secret to sign with.
    #[error("no signing secret in force")]
    NoSecret,
}

/// A signing secret, `whsec_...`. Shown once when made; never printed by `Debug`.
#[derive(Clone)]
pub struct SigningSecret {
    text: String,
    signer: std::sync::Arc<standardwebhooks::Webhook>,
}

impl PartialEq for SigningSecret {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for SigningSecret {}

impl std::fmt::Debug for SigningSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningSecret([REDACTED])")
    }
}

impl SigningSecret {
    /// A new random secret (32 bytes from the operating system's generator).
    pub fn generate() -> Self {
        let mut key = [0u8; SECRET_BYTES];
        rand::rng().fill_bytes(&mut key);
        let text = format!("{SECRET_PREFIX}{}", STANDARD.encode(key));
        Self::parse(&text).unwrap_or_else(|_| unreachable!("a generated secret is well formed"))
    }

    /// A secret read back (from the store, or given by an operator).
    pub fn parse(text: &str) -> Result<Self, SigningError> {
        let Some(encoded) = text.strip_prefix(SECRET_PREFIX) else {
            return Err(SigningError::BadSecret(format!(
                "this one does not start with {SECRET_PREFIX:?}"
            )));
        };
        let key = STANDARD
            .decode(encoded)
            .map_err(|e| SigningError::BadSecret(format!("this one is not base64 ({e})")))?;
        if !(MIN_SECRET_BYTES..=MAX_SECRET_BYTES).contains(&key.len()) {
            return Err(SigningError::BadSecret(format!(
                "this one holds {} bytes",
                key.len()
            )));
        }
        let signer = standardwebhooks::Webhook::from_bytes(key)
            .map_err(|e| SigningError::BadSecret(e.to_string()))?;
        Ok(Self {
            text: text.to_owned(),
            signer: std::sync::Arc::new(signer),
        })
    }

    /// The secret's text, to show its owner once or to keep in the store.
    pub fn expose(&self) -> &str {
        &self.text
    }

    /// `v1,<signature>` of `body` for message `id` at `timestamp` (Unix seconds).
    pub fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Result<String, SigningError> {
        self.signer.sign(id, timestamp, body).map_err(|e| match e {
            standardwebhooks::WebhookError::InvalidPayload => SigningError::BodyNotText,
            other => SigningError::BadSecret(other.to_string()),
        })
    }
}

/// The three headers of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedHeaders {
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp` (Unix seconds).
    pub timestamp: i64,
    /// `webhook-signature`: one `v1,...` per secret, space-separated.
    pub signature: String,
}

impl SignedHeaders {
    /// The headers as (name, value) pairs, in the scheme's names.
    pub fn pairs(&self) -> [(&'static str, String); 3] {
        [
            (standardwebhooks::HEADER_WEBHOOK_ID, self.id.clone()),
            (
                standardwebhooks::HEADER_WEBHOOK_TIMESTAMP,
                self.timestamp.to_string(),
            ),
            (
                standardwebhooks::HEADER_WEBHOOK_SIGNATURE,
                self.signature.clone(),
            ),
        ]
    }
}

/// Signs `body` as message `id` at `timestamp` with every secret in `secrets` (the current one
/// first, then one still in its grace period).
pub fn sign(
    id: &str,
    timestamp: i64,
    body: &[u8],
    secrets: &[&SigningSecret],
) -> Result<SignedHeaders, SigningError> {
    if secrets.is_empty() {
        return Err(SigningError::NoSecret);
    }
    let signatures = secrets
        .iter()
        .map(|s| s.sign(id, timestamp, body))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(SignedHeaders {
        id: id.to_owned(),
        timestamp,
        signature: signatures.join(" "),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_match_the_scheme_s_published_vector_as_the_python_library_computes_it() {
        // The Standard Webhooks specification's example, also what `pip install
        // standardwebhooks` computes: `Webhook(secret).sign(id, 1614265330, body)`.
        let secret = SigningSecret::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        let signature = secret
            .sign(
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1_614_265_330,
                br#"{"test": 2432232314}"#,
            )
            .unwrap();
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    fn headers(signed: &SignedHeaders) -> http::HeaderMap {
        let mut map = http::HeaderMap::new();
        for (name, value) in signed.pairs() {
            map.insert(name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn a_receiver_with_the_official_library_verifies_and_rejects_a_tampered_body() {
        let secret = SigningSecret::generate();
        assert!(secret.expose().starts_with("whsec_"));
        let body = br#"{"type":"video.completed","timestamp":"2026-12-02T10:00:00Z","data":{}}"#;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let signed = sign("msg_whe_1_42", now, body, &[&secret]).unwrap();
        // The receiver's side: the scheme's library, given the secret as shown.
        let receiver = standardwebhooks::Webhook::new(secret.expose()).unwrap();
        receiver.verify(body, &headers(&signed)).unwrap();
        let tampered =
            br#"{"type":"video.completed","timestamp":"2026-12-02T10:00:00Z","data":{"x":1}}"#;
        assert!(matches!(
            receiver.verify(tampered, &headers(&signed)),
            Err(standardwebhooks::WebhookError::InvalidSignature)
        ));
        // Another message id (a replay under another id) fails too.
        let mut other = signed.clone();
        other.id = "msg_whe_1_43".into();
        assert!(receiver.verify(body, &headers(&other)).is_err());
    }

    #[test]
    fn during_a_rotation_both_secrets_sign_and_either_verifies() {
        let (new, old) = (SigningSecret::generate(), SigningSecret::generate());
        assert_ne!(new.expose(), old.expose());
        let body = b"{}";
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let signed = sign("msg_1", now, body, &[&new, &old]).unwrap();
        let parts: Vec<&str> = signed.signature.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert!(parts.iter().all(|p| p.starts_with("v1,")));
        for secret in [&new, &old] {
            standardwebhooks::Webhook::new(secret.expose())
                .unwrap()
                .verify(body, &headers(&signed))
                .unwrap();
        }
        let stranger = SigningSecret::generate();
        assert!(
            standardwebhooks::Webhook::new(stranger.expose())
                .unwrap()
                .verify(body, &headers(&signed))
                .is_err()
        );
    }

    #[test]
    fn secrets_are_checked_and_never_printed() {
        let secret = SigningSecret::generate();
        assert_eq!(
            SigningSecret::parse(secret.expose()).unwrap().expose(),
            secret.expose()
        );
        assert!(!format!("{secret:?}").contains(&secret.expose()[6..]));
        for bad in ["", "secret", "whsec_", "whsec_!!!", "whsec_c2hvcnQ="] {
            let e = SigningSecret::parse(bad).unwrap_err().to_string();
            assert!(e.contains("whsec_"), "{bad}: {e}");
        }
        assert_eq!(sign("m", 0, b"{}", &[]), Err(SigningError::NoSecret));
        assert_eq!(
            sign("m", 0, &[0xff, 0xfe], &[&secret]),
            Err(SigningError::BodyNotText)
        );
    }
}

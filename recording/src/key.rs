//! The session's Ed25519 signing key (ring) and the exact messages it signs: a seal signs the
//! chain head of its segment, the manifest signs its own canonical bytes. Verification needs
//! only the 32-byte public key, which `session_start` and the AgentSession status publish.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ring::rand::SystemRandom;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};

/// Prefix of the message a seal signs: `cassette-seal-v1:<head hex>`.
pub const SEAL_CONTEXT: &[u8] = b"cassette-seal-v1:";
/// Prefix of the message a manifest signs: `cassette-manifest-v1:<canonical manifest bytes>`.
pub const MANIFEST_CONTEXT: &[u8] = b"cassette-manifest-v1:";

/// Why a key could not be made or loaded.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("could not generate an Ed25519 key: the system random source failed")]
    Generate,
    #[error("the stored session key is not a valid Ed25519 PKCS#8 document")]
    Invalid,
}

/// The session's signing key. Cheap to share behind an `Arc`.
pub struct SessionKey {
    pair: Ed25519KeyPair,
    pkcs8: Vec<u8>,
}

impl std::fmt::Debug for SessionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionKey")
            .field("public_key", &self.public_key_base64())
            .finish_non_exhaustive()
    }
}

impl SessionKey {
    /// A fresh key from the system's random source.
    pub fn generate() -> Result<Self, KeyError> {
        let doc =
            Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).map_err(|_| KeyError::Generate)?;
        Self::from_pkcs8(doc.as_ref())
    }

    /// A key from its PKCS#8 v2 document (as [`SessionKey::pkcs8`] returns it).
    pub fn from_pkcs8(doc: &[u8]) -> Result<Self, KeyError> {
        let pair = Ed25519KeyPair::from_pkcs8(doc).map_err(|_| KeyError::Invalid)?;
        Ok(Self {
            pair,
            pkcs8: doc.to_vec(),
        })
    }

    /// The PKCS#8 document, for keeping the key across a restart of the recorder.
    pub fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// The 32 raw bytes of the public key.
    pub fn public_key(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }

    /// The public key as standard base64, as published.
    pub fn public_key_base64(&self) -> String {
        B64.encode(self.public_key())
    }

    /// Signature (base64) of a seal over `head`.
    pub fn sign_seal(&self, head: &str) -> String {
        B64.encode(self.sign(SEAL_CONTEXT, head.as_bytes()))
    }

    /// Signature (base64) of a manifest's canonical bytes.
    pub fn sign_manifest(&self, canonical: &[u8]) -> String {
        B64.encode(self.sign(MANIFEST_CONTEXT, canonical))
    }

    fn sign(&self, context: &[u8], message: &[u8]) -> Vec<u8> {
        let mut m = Vec::with_capacity(context.len() + message.len());
        m.extend_from_slice(context);
        m.extend_from_slice(message);
        self.pair.sign(&m).as_ref().to_vec()
    }
}

/// Decodes a base64 public key; `None` unless it is 32 bytes.
pub fn decode_public_key(b64: &str) -> Option<Vec<u8>> {
    B64.decode(b64).ok().filter(|k| k.len() == 32)
}

/// Checks a seal signature (base64) over `head` with a raw public key.
pub fn verify_seal(public_key: &[u8], head: &str, signature_b64: &str) -> bool {
    verify(public_key, SEAL_CONTEXT, head.as_bytes(), signature_b64)
}

/// Checks a manifest signature (base64) over its canonical bytes with a raw public key.
pub fn verify_manifest(public_key: &[u8], canonical: &[u8], signature_b64: &str) -> bool {
    verify(public_key, MANIFEST_CONTEXT, canonical, signature_b64)
}

fn verify(public_key: &[u8], context: &[u8], message: &[u8], signature_b64: &str) -> bool {
    let Ok(sig) = B64.decode(signature_b64) else {
        return false;
    };
    let mut m = Vec::with_capacity(context.len() + message.len());
    m.extend_from_slice(context);
    m.extend_from_slice(message);
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(&m, &sig)
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_signature_verifies_only_with_its_key_and_head() {
        let key = SessionKey::generate().unwrap();
        let other = SessionKey::generate().unwrap();
        let sig = key.sign_seal("ab");
        assert!(verify_seal(key.public_key(), "ab", &sig));
        assert!(!verify_seal(key.public_key(), "ac", &sig));
        assert!(!verify_seal(other.public_key(), "ab", &sig));
        // A manifest signature is not a seal signature, even over the same bytes.
        assert!(!verify_seal(
            key.public_key(),
            "ab",
            &key.sign_manifest(b"ab")
        ));
    }

    #[test]
    fn key_survives_pkcs8_round_trip() {
        let key = SessionKey::generate().unwrap();
        let again = SessionKey::from_pkcs8(key.pkcs8()).unwrap();
        assert_eq!(key.public_key(), again.public_key());
        assert_eq!(
            decode_public_key(&key.public_key_base64()).unwrap(),
            key.public_key()
        );
        assert!(SessionKey::from_pkcs8(b"nope").is_err());
    }
}

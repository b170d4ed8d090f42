//! Sealing credentials at rest: ChaCha20-Poly1305 (ring's AEAD) under a key
//! from `TRIBUTARY_SECRET_KEY` (base64 of 32 bytes).
//!
//! A sealed value reads `v1.<key id>.<base64 of nonce ‖ ciphertext ‖ tag>`.
//! The key id is the first 8 hex digits of the key's SHA-256, so a value
//! names the key that opens it without revealing it. The nonce is 12 random
//! bytes from the system's generator, new for every seal. The connection's
//! pipeline and id are the associated data: a sealed value copied onto
//! another connection does not open.
//!
//! Rotation: `TRIBUTARY_SECRET_KEY_OLD` may list earlier keys (comma
//! separated). Values under them still open; `tributary connections rekey`
//! seals everything again under the current key, after which the old ones
//! can be dropped.

use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, CHACHA20_POLY1305, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};

/// The env var holding the current key.
pub const KEY_ENV: &str = "TRIBUTARY_SECRET_KEY";
/// The env var listing earlier keys that still open values.
pub const OLD_KEYS_ENV: &str = "TRIBUTARY_SECRET_KEY_OLD";

const VERSION: &str = "v1";

/// Why credentials cannot be sealed or opened.
#[derive(Debug, thiserror::Error)]
pub enum SealError {
    /// The key's env var is not set.
    #[error("{KEY_ENV} is not set: connections' credentials are sealed with it; run `tributary connections keygen` and set {KEY_ENV} to what it prints")]
    NoKey,
    /// A key is not base64 of 32 bytes.
    #[error("{var} is not a key: it must be base64 of 32 bytes, as `tributary connections keygen` prints")]
    BadKey {
        /// The env var.
        var: &'static str,
    },
    /// A value sealed under a key that is not given.
    #[error("credentials sealed under key {key_id}, which is neither {KEY_ENV} nor listed in {OLD_KEYS_ENV}; set {OLD_KEYS_ENV} to the key they were sealed with")]
    UnknownKey {
        /// The key id the value names.
        key_id: String,
    },
    /// A value that is not one tributary sealed, or was changed.
    #[error("sealed credentials do not open (changed, or copied from another connection)")]
    Corrupt,
    /// The system's random generator failed.
    #[error("the system's random number generator failed")]
    Random,
}

struct Key {
    id: String,
    key: LessSafeKey,
}

impl Key {
    fn new(bytes: &[u8]) -> Option<Key> {
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?;
        let id = hex(&ring::digest::digest(&ring::digest::SHA256, bytes).as_ref()[..4]);
        Some(Key {
            id,
            key: LessSafeKey::new(key),
        })
    }
}

/// The keys credentials are sealed and opened with.
pub struct Keys {
    current: Key,
    old: Vec<Key>,
    random: SystemRandom,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids only: a key never reaches a log line.
        f.debug_struct("Keys")
            .field("current", &self.current.id)
            .field("old", &self.old.iter().map(|k| &k.id).collect::<Vec<_>>())
            .finish()
    }
}

impl Keys {
    /// The keys from the environment.
    pub fn from_env() -> Result<Keys, SealError> {
        let current = std::env::var(KEY_ENV).map_err(|_| SealError::NoKey)?;
        let old = std::env::var(OLD_KEYS_ENV).unwrap_or_default();
        Keys::new(&current, &old)
    }

    /// The keys `current` (base64) and `old` (base64, comma separated).
    pub fn new(current: &str, old: &str) -> Result<Keys, SealError> {
        let decode = |text: &str, var| {
            STANDARD
                .decode(text.trim())
                .ok()
                .filter(|b| b.len() == 32)
                .and_then(|b| Key::new(&b))
                .ok_or(SealError::BadKey { var })
        };
        Ok(Keys {
            current: decode(current, KEY_ENV)?,
            old: old
                .split(',')
                .filter(|k| !k.trim().is_empty())
                .map(|k| decode(k, OLD_KEYS_ENV))
                .collect::<Result<_, _>>()?,
            random: SystemRandom::new(),
        })
    }

    /// A new key, base64: what `tributary connections keygen` prints.
    pub fn generate() -> Result<String, SealError> {
        let mut bytes = [0u8; 32];
        SystemRandom::new()
            .fill(&mut bytes)
            .map_err(|_| SealError::Random)?;
        Ok(STANDARD.encode(bytes))
    }

    /// The current key's id.
    pub fn current_id(&self) -> &str {
        &self.current.id
    }

    /// `plain` sealed under the current key, bound to `context`.
    pub fn seal(&self, plain: &[u8], context: &str) -> Result<String, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        self.random
            .fill(&mut nonce)
            .map_err(|_| SealError::Random)?;
        let mut data = plain.to_vec();
        self.current
            .key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(context.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Random)?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&data);
        Ok(format!(
            "{VERSION}.{}.{}",
            self.current.id,
            STANDARD.encode(out)
        ))
    }

    /// The key id a sealed value names, if it is one.
    pub fn key_of(sealed: &str) -> Option<&str> {
        let mut parts = sealed.splitn(3, '.');
        (parts.next()? == VERSION).then_some(())?;
        parts.next()
    }

    /// Opens `sealed`, bound to `context`.
    pub fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(id), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Corrupt);
        };
        let key = std::iter::once(&self.current)
            .chain(&self.old)
            .find(|k| k.id == id)
            .ok_or_else(|| SealError::UnknownKey {
                key_id: id.to_string(),
            })?;
        let bytes = STANDARD.decode(body).map_err(|_| SealError::Corrupt)?;
        if bytes.len() < NONCE_LEN {
            return Err(SealError::Corrupt);
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Corrupt)?;
        let mut data = data.to_vec();
        let plain = key
            .key
            .open_in_place(nonce, Aad::from(context.as_bytes()), &mut data)
            .map_err(|_| SealError::Corrupt)?;
        Ok(plain.to_vec())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let a = Keys::generate().unwrap();
        let b = Keys::generate().unwrap();
        let keys = Keys::new(&a, "").unwrap();
        let sealed = keys.seal(b"{\"token\":\"s3cr3t\"}", "p/acme").unwrap();
        assert!(!sealed.contains("s3cr3t"));
        assert_eq!(Keys::key_of(&sealed), Some(keys.current_id()));
        assert_eq!(
            keys.open(&sealed, "p/acme").unwrap(),
            b"{\"token\":\"s3cr3t\"}"
        );
        // Another connection's context does not open it.
        assert!(matches!(
            keys.open(&sealed, "p/other"),
            Err(SealError::Corrupt)
        ));
        // Two seals of the same value differ (fresh nonces).
        assert_ne!(
            sealed,
            keys.seal(b"{\"token\":\"s3cr3t\"}", "p/acme").unwrap()
        );
        // A changed byte does not open.
        let mut changed = sealed.clone().into_bytes();
        let last = changed.len() - 3;
        changed[last] = if changed[last] == b'A' { b'B' } else { b'A' };
        assert!(keys
            .open(std::str::from_utf8(&changed).unwrap(), "p/acme")
            .is_err());
        // After rotation the old key still opens it; without it, the error names the key.
        let rotated = Keys::new(&b, &a).unwrap();
        assert_eq!(
            rotated.open(&sealed, "p/acme").unwrap(),
            b"{\"token\":\"s3cr3t\"}"
        );
        let only_new = Keys::new(&b, "").unwrap();
        let e = only_new.open(&sealed, "p/acme").unwrap_err();
        assert!(e.to_string().contains(keys.current_id()), "{e}");
    }

    #[test]
    fn a_key_that_is_not_32_bytes_of_base64_is_refused_by_name() {
        for bad in ["", "not base64!", &STANDARD.encode([0u8; 16])] {
            let e = Keys::new(bad, "").unwrap_err();
            assert!(e.to_string().contains(KEY_ENV), "{e}");
        }
        let good = Keys::generate().unwrap();
        let e = Keys::new(&good, "short").unwrap_err();
        assert!(e.to_string().contains(OLD_KEYS_ENV), "{e}");
    }
}

//! Endpoint tokens: the opaque, unforgeable part of a pushEndpoint URL. A token is the
//! XChaCha20-Poly1305 encryption of (uaid, channelID) under a server key, base64url
//! encoded, so an app server can neither read nor forge one.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use simplepush_store::{ChannelId, Uaid};

/// Binds tokens to this purpose, so ciphertexts made for anything else never open.
const AAD: &[u8] = b"simplepush endpoint token v1";
const NONCE_LEN: usize = 24;
/// Length of a key in bytes.
pub const KEY_LEN: usize = 32;

/// Why the configured keys are unusable.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// A key is not base64url.
    #[error("token key #{index} is not base64url")]
    NotBase64 {
        /// Position in the key list, from 1.
        index: usize,
    },
    /// A key decodes to the wrong length.
    #[error(
        "token key #{index} is {len} bytes; keys are {KEY_LEN} bytes (use `simplepush genkey`)"
    )]
    WrongLength {
        /// Position in the key list, from 1.
        index: usize,
        /// Its decoded length.
        len: usize,
    },
    /// No key at all.
    #[error("no token key")]
    Empty,
}

/// Mints tokens with the first key and opens them with any key (for rotation).
pub struct TokenCodec {
    ciphers: Vec<XChaCha20Poly1305>,
}

impl std::fmt::Debug for TokenCodec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCodec")
            .field("keys", &self.ciphers.len())
            .finish()
    }
}

/// A fresh random key, base64url encoded (what `simplepush genkey` prints).
pub fn generate_key() -> String {
    URL_SAFE_NO_PAD.encode(XChaCha20Poly1305::generate_key(&mut OsRng))
}

impl TokenCodec {
    /// A codec from base64url keys (padding optional); the first one mints.
    pub fn new<S: AsRef<str>>(keys: &[S]) -> Result<TokenCodec, KeyError> {
        if keys.is_empty() {
            return Err(KeyError::Empty);
        }
        let ciphers = keys
            .iter()
            .enumerate()
            .map(|(i, key)| {
                let index = i + 1;
                let text = key.as_ref().trim().trim_end_matches('=');
                let bytes = URL_SAFE_NO_PAD
                    .decode(text)
                    .map_err(|_| KeyError::NotBase64 { index })?;
                XChaCha20Poly1305::new_from_slice(&bytes).map_err(|_| KeyError::WrongLength {
                    index,
                    len: bytes.len(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TokenCodec { ciphers })
    }

    /// The token for a channel. Each call gives a different token; all of them open.
    pub fn encode(&self, uaid: &Uaid, channel: &ChannelId) -> String {
        let uaid = uaid.as_str().as_bytes();
        let mut plain = Vec::with_capacity(1 + uaid.len() + channel.as_str().len());
        // Ids are validated UUID shapes (at most 36 bytes), so one length byte suffices.
        plain.push(uaid.len().min(u8::MAX as usize) as u8);
        plain.extend_from_slice(uaid);
        plain.extend_from_slice(channel.as_str().as_bytes());
        let nonce = XChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = self.ciphers[0]
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: AAD,
                },
            )
            // Encryption fails only for messages beyond 256 GiB.
            .unwrap_or_default();
        let mut token = Vec::with_capacity(NONCE_LEN + sealed.len());
        token.extend_from_slice(&nonce);
        token.extend_from_slice(&sealed);
        URL_SAFE_NO_PAD.encode(token)
    }

    /// The channel a token names, or `None` for anything not minted by one of our keys.
    pub fn decode(&self, token: &str) -> Option<(Uaid, ChannelId)> {
        let raw = URL_SAFE_NO_PAD.decode(token).ok()?;
        if raw.len() <= NONCE_LEN {
            return None;
        }
        let (nonce, sealed) = raw.split_at(NONCE_LEN);
        let nonce = XNonce::from_slice(nonce);
        let plain = self.ciphers.iter().find_map(|cipher| {
            cipher
                .decrypt(
                    nonce,
                    Payload {
                        msg: sealed,
                        aad: AAD,
                    },
                )
                .ok()
        })?;
        let (&uaid_len, rest) = plain.split_first()?;
        let uaid_len = usize::from(uaid_len);
        if rest.len() < uaid_len {
            return None;
        }
        let (uaid, channel) = rest.split_at(uaid_len);
        let uaid = std::str::from_utf8(uaid).ok()?;
        let channel = std::str::from_utf8(channel).ok()?;
        Some((Uaid::from(uaid), ChannelId::from(channel)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> (Uaid, ChannelId) {
        (
            Uaid::from("9f8d6a2b3c4e4f5a8b7c6d5e4f3a2b1c"),
            ChannelId::from("2A3F1B2C-4D5E-4F60-8A9B-0C1D2E3F4A5B"),
        )
    }

    #[test]
    fn token_round_trips_ids_exactly() {
        let codec = TokenCodec::new(&[generate_key()]).unwrap();
        let (uaid, channel) = ids();
        let token = codec.encode(&uaid, &channel);
        assert_eq!(codec.decode(&token), Some((uaid, channel)));
        assert!(
            token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let codec = TokenCodec::new(&[generate_key()]).unwrap();
        let (uaid, channel) = ids();
        let raw = URL_SAFE_NO_PAD
            .decode(codec.encode(&uaid, &channel))
            .unwrap();
        for bit in 0..raw.len() * 8 {
            let mut flipped = raw.clone();
            flipped[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(
                codec.decode(&URL_SAFE_NO_PAD.encode(&flipped)),
                None,
                "bit {bit}"
            );
        }
    }

    #[test]
    fn garbage_and_truncated_tokens_are_rejected() {
        let codec = TokenCodec::new(&[generate_key()]).unwrap();
        let (uaid, channel) = ids();
        let token = codec.encode(&uaid, &channel);
        for bad in [
            "",
            "a",
            "!!!!",
            &token[..token.len() - 1],
            &token[..10],
            "AAAA",
        ] {
            assert_eq!(codec.decode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rotation_opens_tokens_of_older_keys_and_mints_with_the_first() {
        let (old, new) = (generate_key(), generate_key());
        let (uaid, channel) = ids();
        let old_token = TokenCodec::new(&[&old]).unwrap().encode(&uaid, &channel);
        let rotated = TokenCodec::new(&[&new, &old]).unwrap();
        assert_eq!(
            rotated.decode(&old_token),
            Some((uaid.clone(), channel.clone()))
        );
        let new_token = rotated.encode(&uaid, &channel);
        assert_eq!(TokenCodec::new(&[&old]).unwrap().decode(&new_token), None);
        assert!(
            TokenCodec::new(&[&new])
                .unwrap()
                .decode(&new_token)
                .is_some()
        );
    }

    #[test]
    fn foreign_key_tokens_are_rejected() {
        let (uaid, channel) = ids();
        let token = TokenCodec::new(&[generate_key()])
            .unwrap()
            .encode(&uaid, &channel);
        assert_eq!(
            TokenCodec::new(&[generate_key()]).unwrap().decode(&token),
            None
        );
    }

    #[test]
    fn bad_keys_are_refused_with_their_position() {
        assert!(matches!(TokenCodec::new::<&str>(&[]), Err(KeyError::Empty)));
        let err = TokenCodec::new(&[generate_key().as_str(), "c2hvcnQ"]).unwrap_err();
        assert!(matches!(err, KeyError::WrongLength { index: 2, len: 5 }));
        assert!(matches!(
            TokenCodec::new(&["not base64!"]),
            Err(KeyError::NotBase64 { index: 1 })
        ));
    }
}

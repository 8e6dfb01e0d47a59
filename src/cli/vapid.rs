//! An app server's VAPID key (RFC 8292) on the command line: `simplepush genkey --vapid`
//! makes one and writes its private half as PKCS#8 PEM (what pywebpush, OpenSSL and
//! most WebPush libraries read); `simplepush push --vapid-key` reads it back and signs
//! each push with an ES256 JWT. Key handling and signing are the p256 crate's.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use p256::SecretKey;
use p256::ecdsa::signature::Signer;
use p256::ecdsa::{Signature, SigningKey};
use p256::elliptic_curve::sec1::ToEncodedPoint;
use p256::pkcs8::{DecodePrivateKey, EncodePrivateKey, LineEnding};
use serde_json::json;

/// How long a signature is valid: RFC 8292 allows at most 24 h; half leaves room for
/// clocks that disagree.
pub const VALIDITY_SECS: u64 = 12 * 3600;

/// A VAPID key pair.
#[derive(Clone)]
pub struct VapidKey {
    secret: SecretKey,
}

impl std::fmt::Debug for VapidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        write!(f, "VapidKey({})", self.public_key_b64())
    }
}

/// Why a key file could not be written or read; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    /// Writing would replace a key that may be in use.
    #[error("{0} already exists; not overwriting a key (choose another --out or remove it)")]
    Exists(PathBuf),
    /// The file cannot be read or written.
    #[error("cannot use the key file {path}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        #[source]
        source: io::Error,
    },
    /// The file holds no P-256 private key in a known form.
    #[error(
        "{0} is not a P-256 private key (expected PKCS#8 PEM `BEGIN PRIVATE KEY`, SEC1 PEM \
         `BEGIN EC PRIVATE KEY`, or 32 bytes of base64url)"
    )]
    Invalid(PathBuf),
}

impl VapidKey {
    /// A fresh key pair.
    pub fn generate() -> VapidKey {
        VapidKey {
            secret: SecretKey::random(&mut rand_core::OsRng),
        }
    }

    /// The public key, uncompressed (65 bytes), base64url without padding: what a page
    /// passes as `applicationServerKey` and what `k=` carries.
    pub fn public_key_b64(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.secret.public_key().to_encoded_point(false).as_bytes())
    }

    /// The private key as PKCS#8 PEM.
    pub fn to_pem(&self) -> String {
        // Encoding a valid key into PKCS#8 only fails on allocation.
        self.secret
            .to_pkcs8_pem(LineEnding::LF)
            .map(|pem| pem.to_string())
            .unwrap_or_default()
    }

    /// Reads a private key: PKCS#8 PEM, SEC1 PEM (`openssl ecparam -genkey`), or the raw
    /// 32-byte scalar as base64url (how some libraries print VAPID keys).
    pub fn parse(text: &str) -> Option<VapidKey> {
        let text = text.trim();
        let secret = if text.contains("-----BEGIN PRIVATE KEY-----") {
            SecretKey::from_pkcs8_pem(text).ok()?
        } else if text.contains("-----BEGIN EC PRIVATE KEY-----") {
            // `openssl ecparam` puts the curve's parameters in a block before the key.
            let start = text.find("-----BEGIN EC PRIVATE KEY-----")?;
            SecretKey::from_sec1_pem(&text[start..]).ok()?
        } else {
            let bytes = URL_SAFE_NO_PAD.decode(text.trim_end_matches('=')).ok()?;
            if bytes.len() != 32 {
                return None;
            }
            SecretKey::from_slice(&bytes).ok()?
        };
        Some(VapidKey { secret })
    }

    /// Reads a key file (see [`VapidKey::parse`]).
    pub fn read(path: &Path) -> Result<VapidKey, KeyFileError> {
        let text = std::fs::read_to_string(path).map_err(|source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        })?;
        VapidKey::parse(&text).ok_or_else(|| KeyFileError::Invalid(path.to_owned()))
    }

    /// Writes the private key as PKCS#8 PEM to a new file readable by its owner only;
    /// refuses to replace an existing file.
    pub fn write_new(&self, path: &Path) -> Result<(), KeyFileError> {
        let io_error = |source| KeyFileError::Io {
            path: path.to_owned(),
            source,
        };
        let mut file = match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                return Err(KeyFileError::Exists(path.to_owned()));
            }
            Err(error) => return Err(io_error(error)),
        };
        file.write_all(self.to_pem().as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error)
    }

    /// An ES256 JWT for pushing to `origin` (the endpoint's `scheme://host[:port]`):
    /// `aud` the origin, `exp` [`VALIDITY_SECS`] after `now`, `sub` the contact.
    pub fn jwt(&self, origin: &str, subject: &str, now: u64) -> String {
        let header = json!({"typ": "JWT", "alg": "ES256"});
        let claims = json!({"aud": origin, "exp": now + VALIDITY_SECS, "sub": subject});
        let signed = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature: Signature = SigningKey::from(&self.secret).sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    /// The `Authorization` header of RFC 8292: `vapid t=<JWT>, k=<public key>`.
    pub fn authorization(&self, origin: &str, subject: &str, now: u64) -> String {
        format!(
            "vapid t={}, k={}",
            self.jwt(origin, subject, now),
            self.public_key_b64()
        )
    }
}

/// A public key as `--vapid-public-key` takes it: base64url (padded or not) of an
/// uncompressed P-256 point; answers it unpadded.
pub fn parse_public_key(text: &str) -> Result<String, String> {
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim().trim_end_matches('='))
        .map_err(|e| format!("not base64url: {e}"))?;
    if bytes.len() != 65 || bytes[0] != 4 {
        return Err(format!(
            "{} bytes; a VAPID public key is an uncompressed P-256 point of 65 (as \
             `simplepush genkey --vapid` prints it)",
            bytes.len()
        ));
    }
    p256::PublicKey::from_sec1_bytes(&bytes).map_err(|_| "not a point on P-256".to_owned())?;
    Ok(URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::app_server::vapid::credentials;

    const ORIGIN: &str = "http://localhost:8081";
    const NOW: u64 = 1_800_000_000;

    #[test]
    fn the_servers_verifier_accepts_what_we_sign() {
        let key = VapidKey::generate();
        let header = key.authorization(ORIGIN, "mailto:ops@example.com", NOW);
        let credentials = credentials(Some(&header), None).unwrap().unwrap();
        assert_eq!(
            URL_SAFE_NO_PAD.encode(credentials.key()),
            key.public_key_b64()
        );
        assert_eq!(credentials.verify(ORIGIN, NOW), Ok(()));
        assert_eq!(credentials.verify(ORIGIN, NOW + VALIDITY_SECS - 1), Ok(()));
        assert!(credentials.verify(ORIGIN, NOW + VALIDITY_SECS).is_err());
        assert!(credentials.verify("http://localhost:9999", NOW).is_err());
    }

    #[test]
    fn the_pem_round_trips_and_ring_reads_it_too() {
        let key = VapidKey::generate();
        let pem = key.to_pem();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{pem}");
        let again = VapidKey::parse(&pem).unwrap();
        assert_eq!(again.public_key_b64(), key.public_key_b64());
        // ring (like OpenSSL) wants the public key inside the PKCS#8 document.
        let der: Vec<u8> = {
            let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
            base64::engine::general_purpose::STANDARD
                .decode(body)
                .unwrap()
        };
        let rng = ring::rand::SystemRandom::new();
        let pair = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &der,
            &rng,
        )
        .unwrap();
        use ring::signature::KeyPair as _;
        assert_eq!(
            URL_SAFE_NO_PAD.encode(pair.public_key().as_ref()),
            key.public_key_b64()
        );
    }

    #[test]
    fn sec1_pem_and_raw_base64url_keys_are_read() {
        let key = VapidKey::generate();
        let sec1 = key.secret.to_sec1_pem(LineEnding::LF).unwrap();
        let with_params = format!(
            "-----BEGIN EC PARAMETERS-----\nBggqhkjOPQMBBw==\n-----END EC PARAMETERS-----\n{}",
            *sec1
        );
        let raw = URL_SAFE_NO_PAD.encode(key.secret.to_bytes());
        for text in [
            sec1.to_string(),
            with_params,
            raw.clone(),
            format!("{raw}=\n"),
        ] {
            assert_eq!(
                VapidKey::parse(&text).map(|k| k.public_key_b64()),
                Some(key.public_key_b64()),
                "{text}"
            );
        }
        for bad in [
            "",
            "hello",
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----",
        ] {
            assert!(VapidKey::parse(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn write_new_refuses_to_overwrite_and_keeps_the_key_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vapid.pem");
        let key = VapidKey::generate();
        key.write_new(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(matches!(
            VapidKey::generate().write_new(&path),
            Err(KeyFileError::Exists(_))
        ));
        assert_eq!(
            VapidKey::read(&path).unwrap().public_key_b64(),
            key.public_key_b64()
        );
        assert!(matches!(
            VapidKey::read(&dir.path().join("missing.pem")),
            Err(KeyFileError::Io { .. })
        ));
    }

    #[test]
    fn public_keys_must_be_uncompressed_points() {
        let key = VapidKey::generate().public_key_b64();
        assert_eq!(parse_public_key(&format!("{key}=")), Ok(key.clone()));
        assert!(parse_public_key("not base64!").is_err());
        assert!(parse_public_key(&key[..40]).is_err());
        let mut off_curve = URL_SAFE_NO_PAD.decode(&key).unwrap();
        off_curve[64] ^= 1;
        assert!(parse_public_key(&URL_SAFE_NO_PAD.encode(off_curve)).is_err());
    }
}

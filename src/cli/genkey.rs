//! `simplepush genkey`: a fresh token key for `[server] token_keys`, or with `--vapid` a
//! VAPID key pair for a WebPush app server (the private key to a new PEM file, the
//! public key on stdout).

use std::path::PathBuf;

use clap::Args;

use crate::cli::vapid::{KeyFileError, VapidKey};

/// What `simplepush genkey` makes.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Make a VAPID key pair (P-256) for WebPush app servers instead: write the private key
    /// to --out as PKCS#8 PEM (for `simplepush push --vapid-key`, pywebpush, OpenSSL) and
    /// print the public key, base64url: a page's `applicationServerKey`, and the
    /// `--vapid-public-key` of `simplepush client --webpush`.
    #[arg(long)]
    pub vapid: bool,
    /// With --vapid: the private key's file; an existing file is never overwritten
    /// [default: vapid.pem].
    #[arg(long, value_name = "FILE", requires = "vapid")]
    pub out: Option<PathBuf>,
}

/// Makes the key and answers the line to print: the token key, or the VAPID public key
/// once its private half is written.
pub fn run(options: &Options) -> Result<String, KeyFileError> {
    if !options.vapid {
        return Ok(crate::app_server::token::generate_key());
    }
    let key = VapidKey::generate();
    let out = options
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from("vapid.pem"));
    key.write_new(&out)?;
    Ok(key.public_key_b64())
}

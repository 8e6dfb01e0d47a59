//! Secrets off the command line: token keys and the router secret from a file or an
//! environment variable, so that other users of the host cannot read them in `ps`.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Server, WAIT, chid};

const BIN: &str = env!("CARGO_BIN_EXE_simplepush");

/// A fresh token key from `simplepush genkey`.
fn genkey() -> String {
    // A short-lived child; blocking for it is harmless in a test.
    let output = Command::new(BIN).arg("genkey").output().unwrap();
    assert!(output.status.success(), "simplepush genkey: {output:?}");
    String::from_utf8(output.stdout).unwrap().trim().to_owned()
}

/// Registers a channel on `server` and returns its pushEndpoint's token.
async fn minted_token(server: &Server) -> String {
    let (mut device, _) = server.device().await;
    let endpoint = device.register(&chid()).await;
    let (_, token) = endpoint
        .split_once("/update/")
        .unwrap_or_else(|| panic!("no /update/ in {endpoint}"));
    token.to_owned()
}

/// What `server` answers a PUT to `token`: 404 when its keys cannot open it.
async fn put_status(server: &Server, token: &str) -> u16 {
    let url = server.endpoint_url(&format!("/update/{token}"));
    server.put(&url, "version=1").await.status
}

#[tokio::test]
async fn token_keys_from_a_file_and_from_the_environment_open_the_same_endpoints() {
    let (key, older) = (genkey(), genkey());
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token.keys");
    std::fs::write(
        &file,
        format!("# minting key\n{key}\n\n{older}  # retired\n"),
    )
    .unwrap();
    let file = file.to_str().unwrap();

    let minter = keyless().arg("--token-keys-file").arg(file).start().await;
    let token = minted_token(&minter).await;
    // The token opens on servers given the same keys in every other way; the store of a
    // second memory server does not know the channel (410), a shared one does (202).
    let same_keys = [
        keyless()
            .env("SIMPLEPUSH_TOKEN_KEYS", &format!("{key},{older}"))
            .start()
            .await,
        keyless()
            .env("SIMPLEPUSH_TOKEN_KEYS_FILE", file)
            .start()
            .await,
        keyless()
            .set("server", "token_keys_file", &format!("{file:?}"))
            .start()
            .await,
        // The minting key alone is enough to open what it minted.
        keyless().env("SIMPLEPUSH_TOKEN_KEYS", &key).start().await,
    ];
    for (i, server) in same_keys.iter().enumerate() {
        let status = put_status(server, &token).await;
        assert!(
            status == 410 || status == 202,
            "server {i} with the file's keys answered {status}"
        );
    }
    // A server with other keys cannot open it (the control: 404 is what failure looks like).
    let other = keyless().env("SIMPLEPUSH_TOKEN_KEYS", &older).start().await;
    assert_eq!(put_status(&other, &token).await, 404);
}

#[tokio::test]
async fn keys_and_secrets_starting_with_a_dash_are_taken_on_the_command_line() {
    // Base64url of 32 bytes whose first six bits are 62: the key's text starts with `-`,
    // as one genkey output in 64 does.
    let mut bytes = [7u8; 32];
    bytes[0] = 0xf8;
    let key = base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes);
    assert!(key.starts_with('-'), "{key}");

    let minter = keyless().arg("--token-keys").arg(&key).start().await;
    let token = minted_token(&minter).await;
    let status = put_status(&minter, &token).await;
    assert!(
        status == 200 || status == 202,
        "the minter answered {status}"
    );
    let other = keyless()
        .arg("--token-keys")
        .arg(&genkey())
        .arg("--router-secret")
        .arg("-starts-with-a-dash")
        .start()
        .await;
    assert_eq!(put_status(&other, &token).await, 404);
}

/// Runs the server with `args` and `envs` until it exits (killed after [`WAIT`]);
/// returns whether it exited by itself with success, and its stderr.
fn run_to_exit(args: &[&str], envs: &[(&str, &str)]) -> (Option<bool>, String) {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("stderr");
    let mut child = Command::new(BIN)
        .args(["--ws-addr", "127.0.0.1:0", "--endpoint-addr", "127.0.0.1:0"])
        .args(["--admin-addr", "127.0.0.1:0"])
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    let exited = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status.success());
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (exited, std::fs::read_to_string(&log).unwrap())
}

#[test]
fn a_value_and_its_file_both_set_is_a_startup_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("secret");
    std::fs::write(&file, format!("{}\n", genkey())).unwrap();
    let file = file.to_str().unwrap();
    let key = genkey();
    for (args, envs, names) in [
        (
            vec!["--token-keys", key.as_str(), "--token-keys-file", file],
            vec![],
            ["`[server] token_keys`", "`[server] token_keys_file`"],
        ),
        (
            vec!["--token-keys-file", file],
            vec![("SIMPLEPUSH_TOKEN_KEYS", key.as_str())],
            ["`[server] token_keys`", "`[server] token_keys_file`"],
        ),
        (
            vec!["--router-secret-file", file],
            vec![("SIMPLEPUSH_ROUTER_SECRET", "s3cret")],
            ["`[router] secret`", "`[router] secret_file`"],
        ),
        (
            vec!["--router-secret", "s3cret"],
            vec![("SIMPLEPUSH_ROUTER_SECRET_FILE", file)],
            ["`[router] secret`", "`[router] secret_file`"],
        ),
    ] {
        let (exited, stderr) = run_to_exit(&args, &envs);
        assert_eq!(exited, Some(false), "{args:?} {envs:?}: {stderr}");
        for name in names {
            assert!(stderr.contains(name), "{args:?} {envs:?}: {stderr}");
        }
    }
}

#[test]
fn an_unreadable_key_file_is_a_startup_error_naming_it() {
    let (exited, stderr) = run_to_exit(&["--token-keys-file", "/nonexistent/keys"], &[]);
    assert_eq!(exited, Some(false), "{stderr}");
    assert!(
        stderr.contains("token_keys_file") && stderr.contains("/nonexistent/keys"),
        "{stderr}"
    );
}

#[test]
fn help_never_shows_a_secret_taken_from_the_environment() {
    let output = Command::new(BIN)
        .arg("--help")
        .env("SIMPLEPUSH_ROUTER_SECRET", "hunter2-router")
        .env("SIMPLEPUSH_TOKEN_KEYS", "hunter2-key")
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    for flag in [
        "--token-keys-file",
        "SIMPLEPUSH_TOKEN_KEYS",
        "--router-secret-file",
        "SIMPLEPUSH_ROUTER_SECRET",
    ] {
        assert!(help.contains(flag), "{flag} not in --help:\n{help}");
    }
    assert!(!help.contains("hunter2"), "a secret in --help:\n{help}");
}

/// A cluster node takes its router secret from a file or the environment: peers
/// presenting it are let in (404 for a uaid not connected there), others get 401.
#[cfg(feature = "memcache")]
#[tokio::test]
async fn router_secret_from_a_file_or_the_environment_guards_the_router() {
    let memcached = common::Memcached::start().await;
    let secret = common::hex_id();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("router.secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let nodes = [
        memcached
            .server()
            .unset("router", "secret")
            .arg("--router-secret-file")
            .arg(file.to_str().unwrap())
            .start()
            .await,
        memcached
            .server()
            .unset("router", "secret")
            .env("SIMPLEPUSH_ROUTER_SECRET", &secret)
            .start()
            .await,
    ];
    for node in &nodes {
        let path = format!("/route/{}", common::hex_id());
        let url = node.router_url(&path);
        for (signer, status) in [(secret.clone(), 404), (common::hex_id(), 401)] {
            let headers =
                common::router_signature(&signer, "DELETE", &path, common::unix_now(), "");
            let headers: Vec<(&str, &str)> = headers
                .iter()
                .map(|(n, v)| (n.as_str(), v.as_str()))
                .collect();
            let reply = common::http_with("DELETE", &url, &headers, None).await;
            assert_eq!(
                reply.status, status,
                "signed with {signer:?}: {}",
                reply.body
            );
        }
    }
}

/// A server whose token keys the test gives: without the harness's own (a memcache test
/// store gets some by default).
fn keyless() -> common::Builder {
    Server::builder().unset("server", "token_keys")
}

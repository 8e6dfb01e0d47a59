//! The server's configuration: the TOML file of docs/protocol.md, with defaults for every
//! key, overridden by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything the server can be told. Every section and key is optional in the file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Listeners, endpoint URLs and token keys.
    pub server: ServerConfig,
    /// Protocol timers and limits.
    pub protocol: ProtocolConfig,
    /// Where channels and pending updates are kept.
    pub store: StoreConfig,
    /// Node-to-node delivery in a cluster.
    pub router: RouterConfig,
    /// Log output.
    pub log: LogConfig,
}

/// `[server]`: what the server listens on and how it names endpoints.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Devices' websocket listener.
    pub ws_addr: SocketAddr,
    /// App servers' listener (`PUT /update/{token}`, health).
    pub endpoint_addr: SocketAddr,
    /// Base of every pushEndpoint. Unset: `http://localhost:<endpoint port>`.
    pub endpoint_url: Option<String>,
    /// Base64url token keys (32 bytes each); the first mints, all open.
    pub token_keys: Vec<String>,
    /// A file holding the token keys, one per line (`#` comments and blank lines
    /// ignored), read into `token_keys` at load; exclusive with `token_keys`.
    pub token_keys_file: Option<PathBuf>,
    /// Operator listener: `/metrics`, `/dashboard/`, detailed `/realstatus/`. Plain
    /// HTTP, never CORS; keep it off the public network.
    pub admin_addr: SocketAddr,
    /// PEM certificate chain: with `tls_key`, both listeners speak TLS (wss://, https://).
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Answer CORS preflights and add CORS headers on the endpoint listener.
    pub cors: bool,
    /// Listen backlog of both listeners (tokio's default of 128 drops SYNs in storms).
    pub backlog: u32,
    /// Device sockets held at once; beyond it upgrades get 503. 0: derived from the
    /// open-file limit (raised to its hard maximum at startup).
    pub max_connections: usize,
    /// Endpoint requests processed at once; beyond it they get 503 with Retry-After.
    pub max_inflight_requests: usize,
    /// While the runtime's scheduling delay (smoothed) is longer than this, endpoint
    /// PUTs get 503 with Retry-After before any work: a CPU-bound server answers the
    /// excess quickly instead of everything slowly. 0 disables it.
    #[serde(with = "humane")]
    pub max_queue_delay: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            ws_addr: SocketAddr::from(([0, 0, 0, 0], 8080)),
            endpoint_addr: SocketAddr::from(([0, 0, 0, 0], 8081)),
            endpoint_url: None,
            token_keys: Vec::new(),
            token_keys_file: None,
            admin_addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
            tls_cert: None,
            tls_key: None,
            cors: false,
            backlog: 4096,
            max_connections: 0,
            max_inflight_requests: 8192,
            max_queue_delay: Duration::from_secs(1),
        }
    }
}

/// `[protocol]`: timers and limits of docs/protocol.md.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProtocolConfig {
    /// A socket that has not said hello by then is closed.
    #[serde(with = "humane")]
    pub hello_timeout: Duration,
    /// Pings closer together than this are refused (0 = no limit).
    #[serde(with = "humane")]
    pub min_ping_interval: Duration,
    /// An update delivered live but not acknowledged is sent again after this.
    #[serde(with = "humane")]
    pub retry_interval: Duration,
    /// Pending updates expire after this and are reported in `expired`.
    #[serde(with = "humane")]
    pub message_ttl: Duration,
    /// A websocket Ping is sent after this much silence from a device (0 = never).
    #[serde(with = "humane")]
    pub ping_interval: Duration,
    /// A device that answers nothing this long after our Ping is dropped.
    #[serde(with = "humane")]
    pub pong_timeout: Duration,
    /// A write to a device that takes longer than this drops the device.
    #[serde(with = "humane")]
    pub write_timeout: Duration,
    /// Live updates queued for a device that is not reading; beyond, its socket is
    /// closed (the updates are stored and flushed at its next hello).
    pub max_queued_updates: usize,
    /// Live channels per uaid.
    pub max_channels: usize,
    /// Largest `data` an app server may send, in bytes.
    pub max_data_bytes: usize,
    /// Largest websocket message a device may send, in bytes.
    pub max_message_bytes: usize,
    /// Commands per second a socket's allowance refills with (0 = no limit).
    pub command_rate: u32,
    /// Commands a socket may send at once before the rate applies (0 = no limit).
    pub command_burst: u32,
    /// Longest `TTL` a WebPush message is kept for; a larger one is lowered to it.
    #[serde(with = "humane")]
    pub max_ttl: Duration,
    /// WebPush messages queued per channel; beyond, a push gets 429.
    pub max_queued_messages: usize,
}

impl Default for ProtocolConfig {
    fn default() -> Self {
        Self {
            hello_timeout: Duration::from_secs(30),
            min_ping_interval: Duration::from_secs(20),
            retry_interval: Duration::from_secs(60),
            message_ttl: Duration::from_secs(3 * 24 * 3600),
            ping_interval: Duration::from_secs(300),
            pong_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_queued_updates: 256,
            max_channels: 200,
            max_data_bytes: 4096,
            max_message_bytes: 64 * 1024,
            command_rate: 50,
            command_burst: 500,
            max_ttl: Duration::from_secs(60 * 24 * 3600),
            max_queued_messages: 100,
        }
    }
}

/// Which store backend to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// In process memory: nothing survives a restart.
    Memory,
    /// An SQLite file under `path`.
    Sqlite,
    /// A RocksDB database under `path`.
    Rocksdb,
    /// A memcached pool shared by the nodes of a cluster.
    Memcache,
}

impl Backend {
    /// The name used in config files and logs.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Sqlite => "sqlite",
            Backend::Rocksdb => "rocksdb",
            Backend::Memcache => "memcache",
        }
    }
}

/// `[store]`: the backend and its own settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// memory | sqlite | rocksdb | memcache.
    pub backend: Backend,
    /// Data directory of the embedded backends (sqlite, rocksdb).
    pub path: PathBuf,
    /// memcached servers (memcache).
    pub servers: Vec<String>,
    /// Sync (sqlite, rocksdb) each batch of writes before answering it: an answered
    /// update survives power loss. Acks are never synced by themselves.
    pub fsync: bool,
    /// Connections per memcached server.
    pub pool_size: u32,
    /// Time limit of one memcached operation.
    #[serde(with = "humane")]
    pub timeout: Duration,
    /// memcached's item size (its `-I`), in bytes: a device's record must fit in one
    /// item; a PUT that would not fit is 413.
    pub item_limit: usize,
    /// Retention: a device not seen (no hello, no register) for this long is removed
    /// with its channels, pending updates and messages. Zero: devices are kept until
    /// they unregister (no retention at all).
    #[serde(with = "humane")]
    pub device_ttl: Duration,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            path: PathBuf::from("simplepush-data"),
            servers: vec!["127.0.0.1:11211".to_owned()],
            fsync: true,
            pool_size: 16,
            timeout: Duration::from_secs(1),
            item_limit: 1024 * 1024,
            device_ttl: Duration::from_secs(60 * 24 * 3600),
        }
    }
}

/// `[router]`: node-to-node delivery (memcache cluster only).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouterConfig {
    /// Listener for peers; keep it off the public network.
    pub addr: SocketAddr,
    /// How peers reach this node. Unset: `http://<bound router address>`.
    pub url: Option<String>,
    /// Shared secret that signs every router request (required on memcache nodes).
    pub secret: String,
    /// Router URLs this node contacts: CIDRs, addresses or host names. Empty: the
    /// network of `addr` (loopback: 127.0.0.0/8 and ::1).
    pub peers: Vec<String>,
    /// A file holding the secret (a trailing newline is trimmed), read into `secret` at
    /// load; exclusive with `secret`.
    pub secret_file: Option<PathBuf>,
}

impl Default for RouterConfig {
    fn default() -> Self {
        Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 3000)),
            url: None,
            secret: String::new(),
            peers: Vec::new(),
            secret_file: None,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `[log]`: what is logged and how.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A tracing filter: "info", "simplepush=debug,warp=info", ...
    pub level: String,
    /// text | json.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a bad value.
    #[error("invalid config {path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the key.
        message: String,
    },
    /// A value and the file that would hold it were both given.
    #[error(
        "both `{value}` and `{file}` are set (in the config file, as flags or from the \
         environment): set only one of them"
    )]
    Conflict {
        /// The value's key, e.g. `[server] token_keys`.
        value: &'static str,
        /// The file's key, e.g. `[server] token_keys_file`.
        file: &'static str,
    },
    /// A secret file could not be read, or holds nothing.
    #[error("cannot read `{key}` {path}: {reason}")]
    SecretFile {
        /// Which key named the file.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

impl Config {
    /// Parses a TOML document; unknown keys are errors naming the key.
    pub fn from_toml(text: &str, origin: &Path) -> Result<Config, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Invalid {
            path: origin.to_owned(),
            message: e.to_string(),
        })
    }

    /// Reads the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Reads `token_keys_file` into `token_keys` and `[router] secret_file` into
    /// `secret` (and clears the file keys), so the server only ever looks at the values.
    /// Call it once flags are applied. A value and its file both set is an error.
    pub fn load_secret_files(&mut self) -> Result<(), ConfigError> {
        if let Some(path) = self.server.token_keys_file.take() {
            if !self.server.token_keys.is_empty() {
                return Err(ConfigError::Conflict {
                    value: "[server] token_keys",
                    file: "[server] token_keys_file",
                });
            }
            let key = "[server] token_keys_file";
            let text = read_secret_file(key, &path)?;
            self.server.token_keys = parse_key_lines(&text);
            if self.server.token_keys.is_empty() {
                return Err(secret_file_error(key, &path, "it holds no key"));
            }
        }
        if let Some(path) = self.router.secret_file.take() {
            if !self.router.secret.is_empty() {
                return Err(ConfigError::Conflict {
                    value: "[router] secret",
                    file: "[router] secret_file",
                });
            }
            let key = "[router] secret_file";
            let text = read_secret_file(key, &path)?;
            self.router.secret = text.trim_end_matches(['\r', '\n']).to_owned();
            if self.router.secret.is_empty() {
                return Err(secret_file_error(key, &path, "it is empty"));
            }
        }
        Ok(())
    }
}

fn secret_file_error(key: &'static str, path: &Path, reason: impl ToString) -> ConfigError {
    ConfigError::SecretFile {
        key,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn read_secret_file(key: &'static str, path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| secret_file_error(key, path, e))
}

/// Token keys, one per line; blank lines and `#` comments are skipped.
fn parse_key_lines(text: &str) -> Vec<String> {
    text.lines()
        .map(|line| line.split_once('#').map_or(line, |(key, _)| key).trim())
        .filter(|key| !key.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Durations as humane strings ("30s", "5m", "3d"); "0" means zero.
/// Parses a humane duration ("30s", "5m", "3d"; "0" is zero), as the config file does.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humane::parse(text)
}

mod humane {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, de::Error};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text).map_err(D::Error::custom)
    }

    pub fn parse(text: &str) -> Result<Duration, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(Duration::ZERO);
        }
        humantime::parse_duration(text)
            .map_err(|e| format!("`{text}` is not a duration like \"30s\", \"5m\" or \"3d\": {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_parses_to_the_defaults() {
        let sample = include_str!("../config.sample.toml");
        let config = Config::from_toml(sample, Path::new("config.sample.toml")).unwrap();
        let defaults = Config::default();
        assert_eq!(config.server.ws_addr, defaults.server.ws_addr);
        assert_eq!(config.server.endpoint_addr, defaults.server.endpoint_addr);
        assert_eq!(config.server.backlog, defaults.server.backlog);
        assert_eq!(config.server.admin_addr, defaults.server.admin_addr);
        assert_eq!(config.server.admin_addr.to_string(), "127.0.0.1:8082");
        assert_eq!(config.server.token_keys_file, None);
        assert_eq!(config.router.secret_file, None);
        assert_eq!(config.server.max_queue_delay, Duration::from_secs(1));
        assert_eq!(
            config.server.max_queue_delay,
            defaults.server.max_queue_delay
        );
        assert_eq!(config.protocol.hello_timeout, Duration::from_secs(30));
        assert_eq!(config.protocol.min_ping_interval, Duration::from_secs(20));
        assert_eq!(config.protocol.retry_interval, Duration::from_secs(60));
        assert_eq!(config.protocol.message_ttl, Duration::from_secs(259_200));
        assert_eq!(config.protocol.ping_interval, Duration::from_secs(300));
        assert_eq!(config.protocol.pong_timeout, Duration::from_secs(30));
        assert_eq!(config.protocol.write_timeout, Duration::from_secs(10));
        assert_eq!(config.protocol.max_queued_updates, 256);
        assert_eq!(config.protocol.max_channels, 200);
        assert_eq!(config.protocol.max_data_bytes, 4096);
        assert_eq!(config.protocol.max_message_bytes, 65536);
        assert_eq!(config.protocol.command_rate, 50);
        assert_eq!(config.protocol.command_burst, 500);
        assert_eq!(config.protocol.max_ttl, Duration::from_secs(60 * 86_400));
        assert_eq!(config.protocol.max_ttl, defaults.protocol.max_ttl);
        assert_eq!(config.protocol.max_queued_messages, 100);
        assert_eq!(config.store.backend, Backend::Memory);
        assert_eq!(config.store.path, PathBuf::from("simplepush-data"));
        assert_eq!(config.store.servers, vec!["127.0.0.1:11211".to_owned()]);
        assert_eq!(config.store.item_limit, 1_048_576);
        assert_eq!(config.store.item_limit, defaults.store.item_limit);
        assert_eq!(config.store.device_ttl, Duration::from_secs(60 * 86_400));
        assert_eq!(config.store.device_ttl, defaults.store.device_ttl);
        assert_eq!(config.router.addr, defaults.router.addr);
        assert_eq!(config.router.url, defaults.router.url);
        assert_eq!(config.router.secret, "");
        assert!(config.router.peers.is_empty());
        assert_eq!(config.log.level, "info");
    }

    /// The container image's config (dist/container-config.toml): every listener on all
    /// addresses of the container, rocksdb in the image's volume, JSON logs.
    #[test]
    fn container_config_parses_to_what_the_image_promises() {
        let text = include_str!("../dist/container-config.toml");
        let config = Config::from_toml(text, Path::new("container-config.toml")).unwrap();
        assert_eq!(config.server.ws_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(config.server.endpoint_addr.to_string(), "0.0.0.0:8081");
        assert_eq!(config.server.admin_addr.to_string(), "0.0.0.0:8082");
        assert_eq!(config.store.backend, Backend::Rocksdb);
        assert_eq!(config.store.path, Path::new("/data"));
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn unknown_key_is_an_error_naming_it() {
        let err = Config::from_toml("[protocol]\nhello_timout = \"5s\"\n", Path::new("x.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("hello_timout"), "{err}");
    }

    #[test]
    fn durations_are_humane() {
        let config = Config::from_toml(
            "[protocol]\nhello_timeout = \"1500ms\"\nmin_ping_interval = \"0\"\nmessage_ttl = \"2d\"\n",
            Path::new("x.toml"),
        )
        .unwrap();
        assert_eq!(config.protocol.hello_timeout, Duration::from_millis(1500));
        assert_eq!(config.protocol.min_ping_interval, Duration::ZERO);
        assert_eq!(config.protocol.message_ttl, Duration::from_secs(2 * 86400));
        let config =
            Config::from_toml("[server]\nmax_queue_delay = \"0\"\n", Path::new("x.toml")).unwrap();
        assert_eq!(config.server.max_queue_delay, Duration::ZERO);
        let config = Config::from_toml("[store]\ndevice_ttl = \"0\"\n", Path::new("x")).unwrap();
        assert_eq!(config.store.device_ttl, Duration::ZERO, "0: no retention");
        let config = Config::from_toml("[store]\ndevice_ttl = \"90d\"\n", Path::new("x")).unwrap();
        assert_eq!(config.store.device_ttl, Duration::from_secs(90 * 86_400));
        let err = Config::from_toml("[protocol]\nretry_interval = \"soon\"\n", Path::new("x"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("retry_interval") || err.contains("soon"),
            "{err}"
        );
    }

    #[test]
    fn unknown_backend_is_an_error() {
        assert!(Config::from_toml("[store]\nbackend = \"postgres\"\n", Path::new("x")).is_err());
    }

    #[test]
    fn secret_files_are_read_into_the_values() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("keys");
        std::fs::write(&keys, "# rotated 2024\nK1\n\n  K2  # old\n").unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let mut config = Config::default();
        config.server.token_keys_file = Some(keys.clone());
        config.router.secret_file = Some(secret.clone());
        config.load_secret_files().unwrap();
        assert_eq!(config.server.token_keys, ["K1", "K2"]);
        assert_eq!(config.router.secret, "s3cret");
        // Resolved once: loading again changes nothing and is no conflict.
        config.load_secret_files().unwrap();
        assert_eq!(config.server.token_keys, ["K1", "K2"]);

        let mut both = Config::default();
        both.server.token_keys = vec!["K".to_owned()];
        both.server.token_keys_file = Some(keys);
        let err = both.load_secret_files().unwrap_err().to_string();
        assert!(
            err.contains("`[server] token_keys`") && err.contains("token_keys_file"),
            "{err}"
        );
        let mut both = Config::default();
        both.router.secret = "x".to_owned();
        both.router.secret_file = Some(secret);
        let err = both.load_secret_files().unwrap_err().to_string();
        assert!(
            err.contains("`[router] secret`") && err.contains("secret_file"),
            "{err}"
        );
    }

    #[test]
    fn missing_or_empty_secret_files_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "# nothing\n\n").unwrap();
        let mut config = Config::default();
        config.server.token_keys_file = Some(empty.clone());
        let err = config.load_secret_files().unwrap_err().to_string();
        assert!(
            err.contains("token_keys_file") && err.contains("no key"),
            "{err}"
        );
        let mut config = Config::default();
        config.router.secret_file = Some(dir.path().join("absent"));
        let err = config.load_secret_files().unwrap_err().to_string();
        assert!(
            err.contains("secret_file") && err.contains("absent"),
            "{err}"
        );
        std::fs::write(&empty, "\n").unwrap();
        let mut config = Config::default();
        config.router.secret_file = Some(empty);
        let err = config.load_secret_files().unwrap_err().to_string();
        assert!(
            err.contains("secret_file") && err.contains("empty"),
            "{err}"
        );
    }
}

//! Command-line flags for every config key (docs/protocol.md: "each key also settable by a
//! flag"). A flag is the key in kebab case; keys whose bare name would be ambiguous carry
//! their section (`--store-path`, `--router-addr`, `--log-level`). A flag given
//! overrides the file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use crate::config::{Backend, Config, LogFormat, parse_duration};

/// Every config key as a flag; each one given overrides the config file.
#[derive(Debug, Default, Args)]
pub struct ConfigFlags {
    #[command(flatten)]
    server: ServerFlags,
    #[command(flatten)]
    protocol: ProtocolFlags,
    #[command(flatten)]
    store: StoreFlags,
    #[command(flatten)]
    router: RouterFlags,
    #[command(flatten)]
    log: LogFlags,
}

/// `[server]`.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "[server] (override the config file)")]
struct ServerFlags {
    /// Devices' websocket listener address (ws_addr).
    #[arg(long, value_name = "ADDR")]
    ws_addr: Option<SocketAddr>,
    /// App servers' listener address (endpoint_addr).
    #[arg(long, value_name = "ADDR")]
    endpoint_addr: Option<SocketAddr>,
    /// Base URL of every pushEndpoint (endpoint_url).
    #[arg(long, value_name = "URL")]
    endpoint_url: Option<String>,
    /// Base64url token keys, comma-separated; the first mints, all open (token_keys).
    #[arg(
        long,
        value_name = "KEYS",
        value_delimiter = ',',
        // A base64url key may start with `-` (one in 64 from genkey).
        allow_hyphen_values = true,
        env = "SIMPLEPUSH_TOKEN_KEYS",
        hide_env_values = true
    )]
    token_keys: Option<Vec<String>>,
    /// File of token keys, one per line, instead of --token-keys (token_keys_file).
    #[arg(
        long,
        value_name = "FILE",
        env = "SIMPLEPUSH_TOKEN_KEYS_FILE",
        hide_env_values = true
    )]
    token_keys_file: Option<PathBuf>,
    /// Operator listener: /metrics, /dashboard/, detailed /realstatus/ (admin_addr).
    #[arg(long, value_name = "ADDR")]
    admin_addr: Option<SocketAddr>,
    /// PEM certificate chain; with --tls-key both listeners speak TLS (tls_cert).
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert (tls_key).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// CORS headers on the endpoint listener (cors).
    #[arg(long, value_name = "BOOL")]
    cors: Option<bool>,
    /// Listen backlog of both listeners (backlog).
    #[arg(long, value_name = "N")]
    backlog: Option<u32>,
    /// Device sockets at once, 0: from the open-file limit (max_connections).
    #[arg(long, value_name = "N")]
    max_connections: Option<usize>,
    /// Endpoint requests at once, then 503 (max_inflight_requests).
    #[arg(long, value_name = "N")]
    max_inflight_requests: Option<usize>,
    /// Shed PUTs with 503 while the runtime is this far behind, 0: off (max_queue_delay).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_queue_delay: Option<Duration>,
}

/// `[protocol]`.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "[protocol] (override the config file)")]
struct ProtocolFlags {
    /// Close sockets that do not say hello in time (hello_timeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    hello_timeout: Option<Duration>,
    /// Refuse pings closer together than this, 0: no limit (min_ping_interval).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    min_ping_interval: Option<Duration>,
    /// Re-send unacknowledged updates after this (retry_interval).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    retry_interval: Option<Duration>,
    /// Pending updates expire after this (message_ttl).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    message_ttl: Option<Duration>,
    /// Websocket Ping after this much silence, 0: off (ping_interval).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    ping_interval: Option<Duration>,
    /// Drop a device that answers no Ping within this (pong_timeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pong_timeout: Option<Duration>,
    /// Drop a device that takes longer to accept a frame (write_timeout).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    write_timeout: Option<Duration>,
    /// Live updates queued for one device before it counts as not reading
    /// (max_queued_updates).
    #[arg(long, value_name = "N")]
    max_queued_updates: Option<usize>,
    /// Live channels per uaid (max_channels).
    #[arg(long, value_name = "N")]
    max_channels: Option<usize>,
    /// Largest `data` of an update, in bytes (max_data_bytes).
    #[arg(long, value_name = "BYTES")]
    max_data_bytes: Option<usize>,
    /// Largest websocket message, in bytes (max_message_bytes).
    #[arg(long, value_name = "BYTES")]
    max_message_bytes: Option<usize>,
    /// Commands per second a socket's allowance refills with, 0: no limit (command_rate).
    #[arg(long, value_name = "N")]
    command_rate: Option<u32>,
    /// Commands a socket may send at once, 0: no limit (command_burst).
    #[arg(long, value_name = "N")]
    command_burst: Option<u32>,
    /// Longest WebPush TTL; larger ones are lowered to it (max_ttl).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    max_ttl: Option<Duration>,
    /// WebPush messages queued per channel, then 429 (max_queued_messages).
    #[arg(long, value_name = "N")]
    max_queued_messages: Option<usize>,
}

/// `[store]`.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "[store] (override the config file)")]
struct StoreFlags {
    /// Store backend (backend).
    #[arg(long = "store", value_name = "BACKEND", value_enum)]
    backend: Option<Backend>,
    /// Data directory of sqlite and rocksdb (path).
    #[arg(long = "store-path", visible_alias = "path", value_name = "DIR")]
    path: Option<PathBuf>,
    /// memcached servers, comma-separated host:port (servers).
    #[arg(
        long = "store-servers",
        visible_alias = "servers",
        value_name = "HOST:PORT,...",
        value_delimiter = ','
    )]
    servers: Option<Vec<String>>,
    /// sqlite and rocksdb sync each batch of writes before answering it (fsync).
    #[arg(long = "store-fsync", visible_alias = "fsync", value_name = "BOOL")]
    fsync: Option<bool>,
    /// Connections per memcached server (pool_size).
    #[arg(
        long = "store-pool-size",
        visible_alias = "pool-size",
        value_name = "N"
    )]
    pool_size: Option<u32>,
    /// Time limit of one memcached operation (timeout).
    #[arg(long = "store-timeout", value_name = "DURATION", value_parser = parse_duration)]
    timeout: Option<Duration>,
    /// memcached's item size, its -I, in bytes (item_limit).
    #[arg(long = "store-item-limit", value_name = "BYTES")]
    item_limit: Option<usize>,
    /// Remove devices not seen for this long, 0: keep them (device_ttl).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    device_ttl: Option<Duration>,
}

/// `[router]`.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "[router] (override the config file)")]
struct RouterFlags {
    /// Listener for peers, memcache cluster only (addr).
    #[arg(long = "router-addr", value_name = "ADDR")]
    addr: Option<SocketAddr>,
    /// How peers reach this node (url).
    #[arg(long = "router-url", value_name = "URL")]
    url: Option<String>,
    /// Shared secret that signs router requests (secret).
    #[arg(
        long = "router-secret",
        value_name = "SECRET",
        allow_hyphen_values = true,
        env = "SIMPLEPUSH_ROUTER_SECRET",
        hide_env_values = true
    )]
    secret: Option<String>,
    /// File holding the shared secret, instead of --router-secret (secret_file).
    #[arg(
        long = "router-secret-file",
        value_name = "FILE",
        env = "SIMPLEPUSH_ROUTER_SECRET_FILE",
        hide_env_values = true
    )]
    secret_file: Option<PathBuf>,
    /// Router URLs this node contacts: CIDRs, addresses or host names (peers).
    #[arg(
        long = "router-peers",
        value_name = "CIDR|HOST,...",
        value_delimiter = ','
    )]
    peers: Option<Vec<String>>,
}

/// `[log]`.
#[derive(Debug, Default, Args)]
#[command(next_help_heading = "[log] (override the config file)")]
struct LogFlags {
    /// Log filter, e.g. "info" or "simplepush=debug" (level).
    #[arg(long = "log-level", value_name = "FILTER")]
    level: Option<String>,
    /// Log format (format).
    #[arg(long = "log-format", value_name = "FORMAT", value_enum)]
    format: Option<LogFormat>,
}

/// `target = value` for every flag that was given.
macro_rules! apply {
    ($($flag:expr => $target:expr),* $(,)?) => {
        $(if let Some(value) = $flag {
            $target = value;
        })*
    };
}

impl ConfigFlags {
    /// Writes every flag that was given over `config`.
    pub fn apply(self, config: &mut Config) {
        let ConfigFlags {
            server: s,
            protocol: p,
            store: st,
            router: r,
            log: l,
        } = self;
        apply! {
            s.ws_addr => config.server.ws_addr,
            s.endpoint_addr => config.server.endpoint_addr,
            s.endpoint_url.map(Some) => config.server.endpoint_url,
            s.token_keys => config.server.token_keys,
            s.token_keys_file.map(Some) => config.server.token_keys_file,
            s.admin_addr => config.server.admin_addr,
            s.tls_cert.map(Some) => config.server.tls_cert,
            s.tls_key.map(Some) => config.server.tls_key,
            s.cors => config.server.cors,
            s.backlog => config.server.backlog,
            s.max_connections => config.server.max_connections,
            s.max_inflight_requests => config.server.max_inflight_requests,
            s.max_queue_delay => config.server.max_queue_delay,
            p.hello_timeout => config.protocol.hello_timeout,
            p.min_ping_interval => config.protocol.min_ping_interval,
            p.retry_interval => config.protocol.retry_interval,
            p.message_ttl => config.protocol.message_ttl,
            p.ping_interval => config.protocol.ping_interval,
            p.pong_timeout => config.protocol.pong_timeout,
            p.write_timeout => config.protocol.write_timeout,
            p.max_queued_updates => config.protocol.max_queued_updates,
            p.max_channels => config.protocol.max_channels,
            p.max_data_bytes => config.protocol.max_data_bytes,
            p.max_message_bytes => config.protocol.max_message_bytes,
            p.command_rate => config.protocol.command_rate,
            p.command_burst => config.protocol.command_burst,
            p.max_ttl => config.protocol.max_ttl,
            p.max_queued_messages => config.protocol.max_queued_messages,
            st.backend => config.store.backend,
            st.path => config.store.path,
            st.servers => config.store.servers,
            st.fsync => config.store.fsync,
            st.pool_size => config.store.pool_size,
            st.timeout => config.store.timeout,
            st.item_limit => config.store.item_limit,
            st.device_ttl => config.store.device_ttl,
            r.addr => config.router.addr,
            r.url.map(Some) => config.router.url,
            r.secret => config.router.secret,
            r.peers => config.router.peers,
            r.secret_file.map(Some) => config.router.secret_file,
            l.level => config.log.level,
            l.format => config.log.format,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        flags: ConfigFlags,
    }

    fn apply(args: &[&str]) -> Config {
        let cli = Cli::try_parse_from(std::iter::once("simplepush").chain(args.iter().copied()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        let mut config = Config::default();
        cli.flags.apply(&mut config);
        config
    }

    #[test]
    fn every_key_of_every_section_has_a_flag() {
        let config = apply(&[
            "--ws-addr=127.0.0.1:1",
            "--endpoint-addr=127.0.0.1:2",
            "--endpoint-url=https://push.example",
            "--token-keys=a,b",
            "--token-keys-file=/k",
            "--admin-addr=127.0.0.1:4",
            "--cors=true",
            "--backlog=7",
            "--max-connections=8",
            "--max-inflight-requests=9",
            "--max-queue-delay=10ms",
            "--hello-timeout=11s",
            "--min-ping-interval=0",
            "--retry-interval=12s",
            "--message-ttl=1d",
            "--ping-interval=13s",
            "--pong-timeout=14s",
            "--write-timeout=15s",
            "--max-queued-updates=16",
            "--max-channels=17",
            "--max-data-bytes=18",
            "--max-message-bytes=19",
            "--command-rate=22",
            "--command-burst=23",
            "--max-ttl=2d",
            "--max-queued-messages=24",
            "--store=sqlite",
            "--path=/tmp/x",
            "--servers=h:1,h:2",
            "--fsync=false",
            "--pool-size=20",
            "--store-timeout=21ms",
            "--store-item-limit=22",
            "--device-ttl=30d",
            "--router-addr=127.0.0.1:3",
            "--router-url=http://peer",
            "--router-secret=s",
            "--router-peers=10.0.0.0/24,node-2",
            "--router-secret-file=/r",
            "--log-level=debug",
            "--log-format=json",
        ]);
        let (server, protocol) = (&config.server, &config.protocol);
        assert_eq!(server.ws_addr.port(), 1);
        assert_eq!(server.endpoint_addr.port(), 2);
        assert_eq!(server.endpoint_url.as_deref(), Some("https://push.example"));
        assert_eq!(server.token_keys, ["a", "b"]);
        assert!(server.cors);
        assert_eq!(
            (server.backlog, server.max_connections),
            (7, 8),
            "backlog, max_connections"
        );
        assert_eq!(server.max_inflight_requests, 9);
        assert_eq!(server.max_queue_delay, Duration::from_millis(10));
        assert_eq!(protocol.hello_timeout, Duration::from_secs(11));
        assert_eq!(protocol.min_ping_interval, Duration::ZERO);
        assert_eq!(protocol.retry_interval, Duration::from_secs(12));
        assert_eq!(protocol.message_ttl, Duration::from_secs(86_400));
        assert_eq!(protocol.ping_interval, Duration::from_secs(13));
        assert_eq!(protocol.pong_timeout, Duration::from_secs(14));
        assert_eq!(protocol.write_timeout, Duration::from_secs(15));
        assert_eq!(
            (
                protocol.max_queued_updates,
                protocol.max_channels,
                protocol.max_data_bytes,
                protocol.max_message_bytes
            ),
            (16, 17, 18, 19)
        );
        assert_eq!((protocol.command_rate, protocol.command_burst), (22, 23));
        assert_eq!(protocol.max_ttl, Duration::from_secs(2 * 86_400));
        assert_eq!(protocol.max_queued_messages, 24);
        assert_eq!(config.store.backend, Backend::Sqlite);
        assert_eq!(config.store.path, PathBuf::from("/tmp/x"));
        assert_eq!(config.store.servers, ["h:1", "h:2"]);
        assert!(!config.store.fsync);
        assert_eq!(config.store.pool_size, 20);
        assert_eq!(config.store.timeout, Duration::from_millis(21));
        assert_eq!(config.store.item_limit, 22);
        assert_eq!(config.store.device_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(config.router.addr.port(), 3);
        assert_eq!(config.router.url.as_deref(), Some("http://peer"));
        assert_eq!(config.router.secret, "s");
        assert_eq!(config.router.peers, ["10.0.0.0/24", "node-2"]);
        assert_eq!(config.router.secret_file, Some(PathBuf::from("/r")));
        assert_eq!(config.server.token_keys_file, Some(PathBuf::from("/k")));
        assert_eq!(config.server.admin_addr.port(), 4);
        assert_eq!(config.log.level, "debug");
        assert_eq!(config.log.format, LogFormat::Json);
    }

    #[test]
    fn no_flag_changes_nothing_and_bad_values_are_refused() {
        let config = apply(&[]);
        let defaults = Config::default();
        assert_eq!(config.server.ws_addr, defaults.server.ws_addr);
        assert_eq!(config.protocol.max_channels, defaults.protocol.max_channels);
        assert_eq!(config.store.path, defaults.store.path);
        assert_eq!(apply(&["--store-path=/d"]).store.path, PathBuf::from("/d"));
        assert_eq!(config.store.device_ttl, defaults.store.device_ttl);
        assert_eq!(apply(&["--device-ttl=0"]).store.device_ttl, Duration::ZERO);
        for bad in [
            &["--hello-timeout=soon"][..],
            &["--max-channels=-1"],
            &["--cors=maybe"],
            &["--device-ttl=forever"],
        ] {
            assert!(
                Cli::try_parse_from(std::iter::once("simplepush").chain(bad.iter().copied()))
                    .is_err(),
                "{bad:?}"
            );
        }
    }
}

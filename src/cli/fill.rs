//! `simplepush fill` (hidden): the loader of `cargo xtask bench store-scale`. It opens the
//! configured store exactly as the server does and registers many devices in it, each
//! with its channels and a last-seen time in the past, so that the benchmark can measure
//! a server that starts on a full store. It writes a random sample of the devices, with
//! their pushEndpoints minted under the server's token keys, for the benchmark to push
//! to and say hello as.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Args;
use futures_util::StreamExt;
use rand_core::{OsRng, RngCore};
use serde::Serialize;
use simplepush_store::{ChannelId, RegisterOutcome, Store, StoreError, Uaid};

use crate::app::unix_now;
use crate::app_server::token::{KeyError, TokenCodec};
use crate::config::{Config, parse_duration};
use crate::store::OpenError;

/// What `simplepush fill` loads.
#[derive(Debug, Clone, Args)]
pub struct Options {
    /// Devices to register, each with a fresh random uaid (32 hex digits).
    #[arg(long, value_name = "N")]
    pub devices: u64,
    /// Channels per device (fresh random UUIDs).
    #[arg(long, value_name = "N", default_value_t = 2)]
    pub channels: usize,
    /// How long ago the devices were last seen (their register time), e.g. "2d".
    #[arg(long, value_name = "DURATION", value_parser = parse_duration, default_value = "0")]
    pub seen_ago: Duration,
    /// Registers in flight at once: enough for the writer's group commit to batch.
    #[arg(long, value_name = "N", default_value_t = 512)]
    pub concurrency: usize,
    /// Devices to write to --sample-out, chosen uniformly at random.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub sample: usize,
    /// The sample, as JSON lines: `{"uaid", "channels": [{"channelID", "endpoint"}]}`.
    #[arg(long, value_name = "FILE", requires = "sample")]
    pub sample_out: Option<PathBuf>,
}

/// Why a fill failed.
#[derive(Debug, thiserror::Error)]
pub enum FillError {
    /// The store did not open.
    #[error(transparent)]
    Open(#[from] OpenError),
    /// The token keys are unusable.
    #[error("token keys: {0}")]
    Keys(#[from] KeyError),
    /// A register failed.
    #[error("register: {0}")]
    Store(#[from] StoreError),
    /// The store refused a channel: more channels than `max_channels`.
    #[error("the store refused channel {0} of a device: raise [protocol] max_channels")]
    TooManyChannels(usize),
    /// The sample file could not be written.
    #[error("sample file: {0}")]
    Sample(#[from] std::io::Error),
}

/// What a fill did.
#[derive(Debug, Clone, Copy)]
pub struct Filled {
    /// Devices registered.
    pub devices: u64,
    /// Channels each.
    pub channels: usize,
    /// How long it took.
    pub took: Duration,
}

impl std::fmt::Display for Filled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.took.as_secs_f64();
        write!(
            f,
            "filled devices={} channels={} secs={secs:.3} rate={:.0}",
            self.devices,
            self.channels,
            self.devices as f64 / secs.max(1e-9)
        )
    }
}

/// One sampled device, a line of the sample file.
#[derive(Debug, Serialize)]
struct SampleLine {
    uaid: String,
    channels: Vec<SampleChannel>,
}

#[derive(Debug, Serialize)]
struct SampleChannel {
    #[serde(rename = "channelID")]
    channel_id: String,
    endpoint: String,
}

/// A small, fast generator of random ids (SplitMix64), seeded from the OS: a million
/// devices need millions of ids, not millions of system calls.
struct Ids(u64);

impl Ids {
    fn seeded() -> Ids {
        Ids(OsRng.next_u64())
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// 32 hex digits, the shape of the uaids the server mints.
    fn uaid(&mut self) -> Uaid {
        Uaid::new(format!("{:016x}{:016x}", self.next(), self.next()))
    }

    /// A random (version 4) UUID, dashed, the shape of the channel ids devices make.
    fn channel(&mut self) -> ChannelId {
        let mut bytes = [0u8; 16];
        bytes[..8].copy_from_slice(&self.next().to_le_bytes());
        bytes[8..].copy_from_slice(&self.next().to_le_bytes());
        let id = uuid::Builder::from_random_bytes(bytes).into_uuid();
        ChannelId::new(id.hyphenated().to_string())
    }

    /// Uniform in `0..bound` (bound > 0; the bias of a 64-bit modulo is negligible here).
    fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// Opens the store of `config`, registers the devices of `options`, writes the sample
/// and closes the store. Prints progress to stderr about once a second.
pub async fn run(config: &Config, options: &Options) -> Result<Filled, FillError> {
    let store = crate::store::open(config)?;
    let tokens = TokenCodec::new(&crate::store::token_keys(config)?)?;
    let base = endpoint_base(config);
    let seen = unix_now().saturating_sub(options.seen_ago.as_secs());
    let max_channels = config.protocol.max_channels;
    let started = Instant::now();
    let result = load(&store, options, seen, max_channels).await;
    // Whatever happened, what was written is flushed and the files are released.
    let closed = store.close().await;
    let sample = result?;
    closed?;
    let took = started.elapsed();
    if let Some(path) = &options.sample_out {
        let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
        for (uaid, channels) in sample {
            let line = SampleLine {
                channels: channels
                    .iter()
                    .map(|channel| SampleChannel {
                        channel_id: channel.as_str().to_owned(),
                        endpoint: format!("{base}/update/{}", tokens.encode(&uaid, channel)),
                    })
                    .collect(),
                uaid: uaid.as_str().to_owned(),
            };
            serde_json::to_writer(&mut out, &line).map_err(std::io::Error::other)?;
            out.write_all(b"\n")?;
        }
        out.flush()?;
    }
    Ok(Filled {
        devices: options.devices,
        channels: options.channels,
        took,
    })
}

/// The base of pushEndpoints, as the server makes it (`[server] endpoint_url`, else
/// localhost and the endpoint listener's port).
fn endpoint_base(config: &Config) -> String {
    let base = config.server.endpoint_url.clone().unwrap_or_else(|| {
        let tls = config.server.tls_cert.is_some() && config.server.tls_key.is_some();
        let scheme = if tls { "https" } else { "http" };
        format!(
            "{scheme}://localhost:{}",
            config.server.endpoint_addr.port()
        )
    });
    base.trim_end_matches('/').to_owned()
}

type Device = (Uaid, Vec<ChannelId>);

/// Registers every device, `options.concurrency` at a time; answers the sample (reservoir
/// sampling over the devices as they complete).
async fn load(
    store: &Arc<dyn Store>,
    options: &Options,
    seen: u64,
    max_channels: usize,
) -> Result<Vec<Device>, FillError> {
    let mut ids = Ids::seeded();
    let mut picks = Ids::seeded();
    let devices = (0..options.devices).map(move |_| {
        let uaid = ids.uaid();
        let channels: Vec<ChannelId> = (0..options.channels).map(|_| ids.channel()).collect();
        (uaid, channels)
    });
    let registers = devices.map(|(uaid, channels)| {
        let store = store.clone();
        async move {
            for (i, channel) in channels.iter().enumerate() {
                match store.register(&uaid, channel, max_channels, seen).await? {
                    RegisterOutcome::Registered => {}
                    RegisterOutcome::TooManyChannels => {
                        return Err(FillError::TooManyChannels(i + 1));
                    }
                }
            }
            Ok::<Device, FillError>((uaid, channels))
        }
    });
    // The iterator is lazy: only `concurrency` devices exist at a time, not a million.
    let mut stream =
        futures_util::stream::iter(registers).buffer_unordered(options.concurrency.max(1));
    let mut sample: Vec<Device> = Vec::with_capacity(options.sample);
    let mut count = 0u64;
    let started = Instant::now();
    let mut next_report = started + Duration::from_secs(1);
    while let Some(device) = stream.next().await {
        let device = device?;
        count += 1;
        if sample.len() < options.sample {
            sample.push(device);
        } else if options.sample > 0 {
            let slot = picks.below(count);
            if let Ok(slot) = usize::try_from(slot)
                && slot < options.sample
            {
                sample[slot] = device;
            }
        }
        if Instant::now() >= next_report {
            next_report += Duration::from_secs(1);
            let secs = started.elapsed().as_secs_f64();
            eprintln!(
                "fill: {count}/{} devices ({:.0}/s)",
                options.devices,
                count as f64 / secs.max(1e-9)
            );
        }
    }
    Ok(sample)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::protocol::is_uuid_shaped;
    use simplepush_store::MemoryStore;

    fn options(devices: u64, sample: usize, sample_out: Option<PathBuf>) -> Options {
        Options {
            devices,
            channels: 2,
            seen_ago: Duration::from_secs(3600),
            concurrency: 16,
            sample,
            sample_out,
        }
    }

    #[tokio::test]
    async fn every_device_gets_its_channels_and_the_sample_is_of_them() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let sample = load(&store, &options(300, 20, None), 1_000, 4)
            .await
            .unwrap();
        assert_eq!(sample.len(), 20);
        let mut uaids: Vec<&str> = sample.iter().map(|(u, _)| u.as_str()).collect();
        uaids.sort_unstable();
        uaids.dedup();
        assert_eq!(uaids.len(), 20, "a device sampled twice");
        for (uaid, channels) in &sample {
            assert_eq!(channels.len(), 2);
            for channel in channels {
                assert!(store.registered(uaid, channel).await.unwrap(), "{uaid:?}");
            }
        }
        // A sample larger than the fill holds every device once.
        let all = load(&store, &options(5, 10, None), 1_000, 4).await.unwrap();
        assert_eq!(all.len(), 5);
    }

    #[tokio::test]
    async fn a_device_beyond_max_channels_fails_the_fill() {
        let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
        let error = load(&store, &options(3, 0, None), 1_000, 1)
            .await
            .unwrap_err();
        assert!(matches!(error, FillError::TooManyChannels(2)), "{error:?}");
    }

    #[tokio::test]
    async fn sampled_endpoints_open_with_the_servers_keys() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("sample.jsonl");
        let key = crate::app_server::token::generate_key();
        let mut config = Config::default();
        config.server.token_keys = vec![key.clone()];
        config.server.endpoint_url = Some("https://push.example/".into());
        let filled = run(&config, &options(50, 7, Some(out.clone())))
            .await
            .unwrap();
        assert_eq!((filled.devices, filled.channels), (50, 2));
        assert!(
            filled
                .to_string()
                .starts_with("filled devices=50 channels=2 secs=")
        );
        let codec = TokenCodec::new(&[key]).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert_eq!(text.lines().count(), 7);
        for line in text.lines() {
            let device: serde_json::Value = serde_json::from_str(line).unwrap();
            let uaid = device["uaid"].as_str().unwrap();
            for channel in device["channels"].as_array().unwrap() {
                let endpoint = channel["endpoint"].as_str().unwrap();
                let token = endpoint
                    .strip_prefix("https://push.example/update/")
                    .unwrap_or_else(|| panic!("{endpoint}"));
                let (u, c) = codec.decode(token).unwrap();
                assert_eq!(u.as_str(), uaid);
                assert_eq!(c.as_str(), channel["channelID"].as_str().unwrap());
            }
        }
    }

    #[test]
    fn ids_have_the_shapes_the_server_accepts_and_do_not_repeat() {
        let mut ids = Ids::seeded();
        let (a, b) = (ids.uaid(), ids.uaid());
        assert!(
            is_uuid_shaped(a.as_str()) && a.as_str().len() == 32,
            "{a:?}"
        );
        assert_ne!(a, b);
        let channel = ids.channel();
        assert!(is_uuid_shaped(channel.as_str()), "{channel:?}");
        assert_eq!(channel.as_str().len(), 36);
        assert_eq!(
            &channel.as_str()[14..15],
            "4",
            "a version 4 UUID: {channel:?}"
        );
    }
}

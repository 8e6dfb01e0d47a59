//! The CI matrix: which feature sets are checked, in which order, and the steps that follow.

use clap::ValueEnum;

/// One feature set of the root package `simplepush` that CI checks with clippy and tests.
///
/// The declaration order is the run order. It is chosen for build time: the cheap legs
/// come first (quick feedback), and `rocksdb` runs right before `all`, whose feature set
/// leaves librocksdb-sys's fingerprint unchanged, so RocksDB's C++ (~13 minutes on two
/// cores) is built once per run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Leg {
    /// No features: the in-memory store only.
    Memory,
    /// `simplepush/sqlite`.
    Sqlite,
    /// `simplepush/memcache`, tested against two memcached servers started by xtask.
    Memcache,
    /// `simplepush/rocksdb` (builds RocksDB's C++ from source).
    Rocksdb,
    /// Every backend feature of `simplepush` at once.
    All,
}

impl Leg {
    /// Every leg, in run order.
    pub const ALL: [Leg; 5] = [
        Leg::Memory,
        Leg::Sqlite,
        Leg::Memcache,
        Leg::Rocksdb,
        Leg::All,
    ];

    /// The leg's name as typed after `--leg` and shown in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Leg::Memory => "memory",
            Leg::Sqlite => "sqlite",
            Leg::Memcache => "memcache",
            Leg::Rocksdb => "rocksdb",
            Leg::All => "all",
        }
    }

    /// The root package's backend features this leg turns on.
    fn features(self) -> &'static [&'static str] {
        match self {
            Leg::Memory => &[],
            Leg::Sqlite => &["sqlite"],
            Leg::Memcache => &["memcache"],
            Leg::Rocksdb => &["rocksdb"],
            // Spelled out rather than `--all-features`: that flag would also switch on
            // every feature of every workspace member (say a backend crate's optional
            // compression), which could change librocksdb-sys's fingerprint and rebuild it.
            Leg::All => &["memcache", "rocksdb", "sqlite"],
        }
    }

    /// The cargo arguments selecting this leg's features, e.g. `--features simplepush/sqlite`.
    ///
    /// The `package/feature` spelling is the one that is unambiguous with `--workspace`.
    pub fn cargo_feature_args(self) -> Vec<String> {
        let features = self.features();
        if features.is_empty() {
            return Vec::new();
        }
        let list: Vec<String> = features.iter().map(|f| format!("simplepush/{f}")).collect();
        vec!["--features".to_owned(), list.join(",")]
    }

    /// The store the black-box tests run against in this leg (`SIMPLEPUSH_TEST_STORE`),
    /// so the whole wire suite runs on every backend; memory when `None`.
    pub fn store_under_test(self) -> Option<&'static str> {
        match self {
            Leg::Memory | Leg::All => None,
            Leg::Sqlite => Some("sqlite"),
            Leg::Memcache => Some("memcache"),
            Leg::Rocksdb => Some("rocksdb"),
        }
    }

    /// Whether the leg's tests need the memcached servers xtask starts.
    pub fn needs_memcached(self) -> bool {
        self.features().contains(&"memcache")
    }
}

/// One step of a run, in the order [`plan`] gives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Check (and as root, install) the system packages the legs need.
    Preflight,
    /// `cargo fmt --all -- --check`.
    Fmt,
    /// Start the two memcached servers, kept until the end of the run.
    StartMemcached,
    /// `cargo clippy --workspace --all-targets <features> -- -D warnings`.
    Clippy(Leg),
    /// `cargo test --workspace <features>`.
    Test(Leg),
    /// The container image built from the `all` leg's debug binary, run and stopped, and
    /// the systemd unit verified (`cargo xtask image-test`); right after that leg's tests.
    Image,
    /// Every fuzz target of tests/fuzz, briefly (`cargo xtask fuzz`).
    Fuzz,
}

impl Step {
    /// The leg column of the summary (`-` for steps that belong to no leg).
    pub fn leg_name(self) -> &'static str {
        match self {
            Step::Clippy(leg) | Step::Test(leg) => leg.name(),
            Step::Image => Leg::All.name(),
            Step::Preflight | Step::Fmt | Step::StartMemcached | Step::Fuzz => "-",
        }
    }

    /// How the step is named in progress lines and errors: `fmt`, `memory clippy`.
    pub fn label(self) -> String {
        match self {
            Step::Clippy(leg) | Step::Test(leg) => format!("{} {}", leg.name(), self.name()),
            Step::Image => format!("{} {}", Leg::All.name(), self.name()),
            Step::Preflight | Step::Fmt | Step::StartMemcached | Step::Fuzz => {
                self.name().to_owned()
            }
        }
    }

    /// The step column of the summary.
    pub fn name(self) -> &'static str {
        match self {
            Step::Preflight => "preflight",
            Step::Fmt => "fmt",
            Step::StartMemcached => "memcached",
            Step::Clippy(_) => "clippy",
            Step::Test(_) => "test",
            Step::Image => "image",
            Step::Fuzz => "fuzz",
        }
    }
}

/// The steps for `legs` (any order, duplicates allowed; empty means every leg).
///
/// Legs run in [`Leg::ALL`] order whatever order they were asked in. memcached starts once,
/// right before the first leg that needs it. The `all` leg ends with the image step (on
/// its debug binary). With `fuzz`, the fuzz targets run last.
pub fn plan(legs: &[Leg], clippy: bool, fuzz: bool) -> Vec<Step> {
    let mut legs: Vec<Leg> = if legs.is_empty() {
        Leg::ALL.to_vec()
    } else {
        legs.to_vec()
    };
    legs.sort_unstable();
    legs.dedup();

    let mut steps = vec![Step::Preflight, Step::Fmt];
    let mut memcached_started = false;
    for leg in legs {
        if leg.needs_memcached() && !memcached_started {
            steps.push(Step::StartMemcached);
            memcached_started = true;
        }
        if clippy {
            steps.push(Step::Clippy(leg));
        }
        steps.push(Step::Test(leg));
        if leg == Leg::All {
            steps.push(Step::Image);
        }
    }
    if fuzz {
        steps.push(Step::Fuzz);
    }
    steps
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::{Leg, Step, plan};

    #[test]
    fn full_plan_runs_rocksdb_right_before_all_the_image_after_it_memcached_once_and_fuzz_last() {
        let steps = plan(&[], true, true);
        assert_eq!(
            steps,
            vec![
                Step::Preflight,
                Step::Fmt,
                Step::Clippy(Leg::Memory),
                Step::Test(Leg::Memory),
                Step::Clippy(Leg::Sqlite),
                Step::Test(Leg::Sqlite),
                Step::StartMemcached,
                Step::Clippy(Leg::Memcache),
                Step::Test(Leg::Memcache),
                Step::Clippy(Leg::Rocksdb),
                Step::Test(Leg::Rocksdb),
                Step::Clippy(Leg::All),
                Step::Test(Leg::All),
                Step::Image,
                Step::Fuzz,
            ]
        );
    }

    #[test]
    fn requested_legs_are_sorted_deduplicated_and_clippy_and_fuzz_can_be_skipped() {
        let steps = plan(&[Leg::All, Leg::Memory, Leg::All], false, false);
        assert_eq!(
            steps,
            vec![
                Step::Preflight,
                Step::Fmt,
                Step::Test(Leg::Memory),
                Step::StartMemcached,
                Step::Test(Leg::All),
                Step::Image,
            ]
        );
    }

    #[test]
    fn legs_without_memcache_start_no_memcached_and_no_image() {
        let steps = plan(&[Leg::Sqlite, Leg::Rocksdb], true, true);
        assert!(!steps.contains(&Step::StartMemcached));
        assert!(!steps.contains(&Step::Image));
    }

    #[test]
    fn feature_args_use_the_package_qualified_spelling() {
        assert!(Leg::Memory.cargo_feature_args().is_empty());
        assert_eq!(
            Leg::Sqlite.cargo_feature_args(),
            ["--features", "simplepush/sqlite"]
        );
        assert_eq!(
            Leg::All.cargo_feature_args(),
            [
                "--features",
                "simplepush/memcache,simplepush/rocksdb,simplepush/sqlite"
            ]
        );
    }

    /// The `all` leg and the single-backend legs must cover exactly the root package's
    /// optional features, so a new backend cannot be forgotten here (features on by
    /// default, such as the allocator, are on in every leg already).
    #[test]
    fn matrix_covers_every_feature_of_the_root_package() {
        let manifest_path = concat!(env!("CARGO_MANIFEST_DIR"), "/../Cargo.toml");
        let manifest: toml::Table = std::fs::read_to_string(manifest_path)
            .unwrap()
            .parse()
            .unwrap();
        let features = manifest["features"].as_table().unwrap();
        let on_by_default: BTreeSet<&str> = features["default"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(toml::Value::as_str)
            .collect();
        let declared: BTreeSet<&str> = features
            .keys()
            .map(String::as_str)
            .filter(|name| *name != "default" && !on_by_default.contains(name))
            .collect();

        let in_all: BTreeSet<&str> = Leg::All.features().iter().copied().collect();
        assert_eq!(in_all, declared, "the `all` leg must enable every feature");

        let single: BTreeSet<&str> = Leg::ALL
            .iter()
            .filter(|leg| **leg != Leg::All)
            .flat_map(|leg| leg.features().iter().copied())
            .collect();
        assert_eq!(single, declared, "every feature needs a leg of its own");
    }
}

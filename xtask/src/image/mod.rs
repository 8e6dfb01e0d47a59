//! `cargo xtask image`: the container image of dist/Containerfile, built from what this
//! machine has (no base image is pulled): the binary, exactly the shared libraries `ldd`
//! names, a one-user /etc/passwd and /etc/group, and dist/container-config.toml.
//!
//! `cargo xtask image-test` (and the `image` step of `cargo xtask test`'s `all` leg) builds
//! that image into private podman storage and checks it with real sockets ([`check`]),
//! then checks dist/simplepush.service ([`unit`]).

mod check;
mod context;
mod podman;
mod unit;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};

use crate::sys;
use context::BuildContext;
pub use podman::Podman;

/// The image's user and group id (dist/Containerfile's `USER`): not root, and above the
/// ids distributions hand out, so it matches no user of the host by accident.
pub const IMAGE_UID: u32 = 10001;

/// Options of `cargo xtask image`.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// Backend features to build with (comma-separated), e.g. `rocksdb,sqlite`. The
    /// image's config uses rocksdb; without it, sqlite, else the memory store.
    #[arg(long, value_delimiter = ',', conflicts_with = "binary")]
    features: Vec<String>,

    /// Which cargo profile to build.
    #[arg(long, value_enum, default_value_t = Profile::Release, conflicts_with = "binary")]
    profile: Profile,

    /// Put this simplepush binary in the image instead of building one.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,

    /// Image name(s) to tag (repeatable). Default: simplepush:<version> and
    /// simplepush:latest.
    #[arg(long = "tag", value_name = "NAME")]
    tags: Vec<String>,

    /// The container engine's command: podman, or docker (same build arguments).
    #[arg(long, default_value = "podman")]
    engine: String,
}

/// A cargo profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Profile {
    /// `--release`.
    Release,
    /// The dev profile (target/debug).
    Debug,
}

/// Runs `cargo xtask image`: builds the binary unless given one, then the image, and
/// prints its size.
pub fn run(args: &ImageArgs) -> Result<()> {
    let (binary, origin) = match &args.binary {
        Some(path) => (path.clone(), format!("binary {}", path.display())),
        None => {
            let features: Vec<&str> = args.features.iter().map(String::as_str).collect();
            let debug = args.profile == Profile::Debug;
            let path = crate::bench::build_simplepush(&features, debug)?;
            let profile = if debug { "debug" } else { "release" };
            (path, format!("{profile} build"))
        }
    };
    let engine = Podman::engine(&args.engine);
    let version = binary_version(&binary)?;
    let tags = if args.tags.is_empty() {
        vec![
            format!("simplepush:{version}"),
            "simplepush:latest".to_owned(),
        ]
    } else {
        args.tags.clone()
    };
    let image = build(&engine, &binary, &tags)?;
    println!(
        "image: {} built from the {origin} ({}): {}",
        tags.join(", "),
        image.backends_line(),
        image.size_line()
    );
    Ok(())
}

/// Options of `cargo xtask image-test`.
#[derive(Debug, Args)]
pub struct ImageTestArgs {
    /// The simplepush binary to put in the image, instead of building the debug binary
    /// with `--features`.
    #[arg(long, value_name = "PATH")]
    binary: Option<PathBuf>,

    /// Backend features of the debug build (comma-separated); the check needs sqlite or
    /// rocksdb, for its restart. Default: those of the `all` leg.
    #[arg(
        long,
        value_delimiter = ',',
        default_values_t = ["memcache".to_owned(), "rocksdb".to_owned(), "sqlite".to_owned()],
        conflicts_with = "binary"
    )]
    features: Vec<String>,
}

/// Runs `cargo xtask image-test`: preflight, the debug build unless given a binary, then
/// [`check`].
pub fn run_test(args: &ImageTestArgs) -> Result<()> {
    crate::preflight::image()?;
    let (binary, origin) = match &args.binary {
        Some(path) => (path.clone(), format!("binary {}", path.display())),
        None => {
            let features: Vec<&str> = args.features.iter().map(String::as_str).collect();
            let path = crate::bench::build_simplepush(&features, true)?;
            (path, "debug build".to_owned())
        }
    };
    check(&binary, &origin)
}

/// The check of the `image` step: the container built from `binary` (described as
/// `origin` in what it prints) must serve, keep its store across a restart on the same
/// volume and stop cleanly on SIGTERM; then dist/simplepush.service must verify.
pub fn check(binary: &Path, origin: &str) -> Result<()> {
    if !sys::is_root() {
        bail!(
            "the container check runs as root: it gives the mounted store directory to the \
             image's user ({IMAGE_UID}), and rootless podman would need subordinate ids"
        );
    }
    check::container(binary, origin).context("the container check")?;
    unit::check(binary).context("the systemd unit check (dist/simplepush.service)")
}

/// An image that was built: what it holds and its size.
#[derive(Debug)]
pub struct Built {
    /// The first tag it got.
    pub tag: String,
    /// The durable backend its config uses (`rocksdb`, `sqlite`) or `memory`.
    pub backend: &'static str,
    /// The backends found compiled into the binary (besides memory and memcache, which
    /// are not probed).
    pub compiled: Vec<&'static str>,
    /// Bytes, as the engine counts them.
    pub size: u64,
    /// Bytes of the binary in it (debug info stripped).
    pub binary_size: u64,
}

impl Built {
    /// `backends compiled in: rocksdb, sqlite; config: rocksdb`.
    pub fn backends_line(&self) -> String {
        let compiled = if self.compiled.is_empty() {
            "none but memory".to_owned()
        } else {
            self.compiled.join(", ")
        };
        format!(
            "stores compiled in: {compiled}; config uses {}",
            self.backend
        )
    }

    /// `32.5 MB (binary 29.1 MB)`.
    pub fn size_line(&self) -> String {
        format!(
            "{} (binary {}, debug info stripped)",
            megabytes(self.size),
            megabytes(self.binary_size)
        )
    }
}

/// Builds the image of dist/Containerfile from `binary` with `engine`, tagged `tags`.
pub fn build(engine: &Podman, binary: &Path, tags: &[String]) -> Result<Built> {
    let first = tags.first().context("no tag to give the image")?;
    let compiled = compiled_backends(binary)?;
    let backend = if compiled.contains(&"rocksdb") {
        "rocksdb"
    } else if compiled.contains(&"sqlite") {
        "sqlite"
    } else {
        "memory"
    };
    if backend != "rocksdb" {
        println!(
            "image: the binary has no rocksdb: the image's config uses {backend} instead \
             (build with --features rocksdb for the intended image)"
        );
    }
    let context = BuildContext::assemble(binary, backend)?;
    let labels = Labels::collect(binary)?;
    let containerfile = sys::workspace_root().join("dist").join("Containerfile");

    let mut args: Vec<String> = vec!["build".into(), "--file".into()];
    args.push(containerfile.display().to_string());
    if engine.is_podman() {
        // One layer, and no intermediate images left behind by each build.
        args.push("--layers=false".into());
    }
    for (key, value) in labels.build_args() {
        args.push("--build-arg".into());
        args.push(format!("{key}={value}"));
    }
    for tag in tags {
        args.push("--tag".into());
        args.push(tag.clone());
    }
    args.push(context.path().display().to_string());
    engine.run_shown(&args)?;

    let size = engine.image_size(first)?;
    Ok(Built {
        tag: first.clone(),
        backend,
        compiled,
        size,
        binary_size: context.binary_size()?,
    })
}

/// The values of the image's `org.opencontainers.image.*` labels.
#[derive(Debug)]
struct Labels {
    version: String,
    revision: String,
    created: String,
    description: String,
    licenses: String,
}

impl Labels {
    fn collect(binary: &Path) -> Result<Labels> {
        let (description, licenses) = package_metadata()?;
        Ok(Labels {
            version: binary_version(binary)?,
            revision: git_revision()?,
            created: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            description,
            licenses,
        })
    }

    /// The `--build-arg`s dist/Containerfile declares.
    fn build_args(&self) -> [(&'static str, &str); 5] {
        [
            ("VERSION", &self.version),
            ("REVISION", &self.revision),
            ("CREATED", &self.created),
            ("DESCRIPTION", &self.description),
            ("LICENSES", &self.licenses),
        ]
    }
}

/// The version the binary itself reports (`simplepush --version`: `simplepush 0.1.0`).
fn binary_version(binary: &Path) -> Result<String> {
    let output = Command::new(binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let text = String::from_utf8_lossy(&output.stdout);
    match text.trim().strip_prefix("simplepush ") {
        Some(version) if output.status.success() && !version.is_empty() => Ok(version.to_owned()),
        _ => bail!(
            "{} --version answered {text:?}: is it simplepush?",
            binary.display()
        ),
    }
}

/// The commit checked out (`git rev-parse HEAD`); warns when the tree has changes that
/// the label then does not describe.
fn git_revision() -> Result<String> {
    let git = |args: &[&str]| -> Result<String> {
        let output = Command::new("git")
            .args(args)
            .current_dir(sys::workspace_root())
            .output()
            .context("running git")?;
        if !output.status.success() {
            bail!(
                "`git {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
    };
    let revision = git(&["rev-parse", "HEAD"])?;
    if !git(&["status", "--porcelain", "--untracked-files=no"])?.is_empty() {
        println!("image: the work tree has uncommitted changes; the revision label names HEAD");
    }
    Ok(revision)
}

/// The root package's description and license, from Cargo.toml (through cargo metadata).
fn package_metadata() -> Result<(String, String)> {
    let output = Command::new(sys::cargo())
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .current_dir(sys::workspace_root())
        .output()
        .context("running cargo metadata")?;
    if !output.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let metadata: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "simplepush"))
        .context("no simplepush package in cargo metadata")?;
    let field = |name: &str| {
        package[name]
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("Cargo.toml has no {name}"))
    };
    Ok((field("description")?, field("license")?))
}

/// The embedded stores compiled into `binary`, asked of the binary itself: it is started
/// with `--store NAME` on a store path it cannot create, and exits at once either way —
/// with "is not compiled in" when the feature is missing, with an I/O error otherwise.
pub fn compiled_backends(binary: &Path) -> Result<Vec<&'static str>> {
    let scratch = crate::bench::ScratchDir::new("probe")?;
    // A file where a directory must be: creating the store under it fails (even as root).
    let blocker = scratch.path().join("not-a-directory");
    std::fs::write(&blocker, "")?;
    let mut found = Vec::new();
    for backend in ["rocksdb", "sqlite"] {
        let mut command = Command::new(binary);
        command
            .args(["--store", backend, "--store-path"])
            .arg(blocker.join("store"))
            .args([
                "--ws-addr",
                "127.0.0.1:0",
                "--endpoint-addr",
                "127.0.0.1:0",
                "--admin-addr",
                "127.0.0.1:0",
            ])
            // No ./config.toml there to surprise us.
            .current_dir(scratch.path());
        let output = output_within(command, PROBE_TIMEOUT)
            .with_context(|| format!("probing {} for {backend}", binary.display()))?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        if output.status.success() || output.stdout.starts_with(b"simplepush listening") {
            bail!(
                "probing {backend}: the binary started on a store path it cannot create: \
                 {stderr}"
            );
        }
        if !stderr.contains("is not compiled in") {
            found.push(backend);
        }
    }
    Ok(found)
}

/// How long a probe of [`compiled_backends`] may run: it exits at once, but a binary that
/// somehow served must not hang the build.
const PROBE_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs `command` (stdin closed) and collects its output; kills it after `timeout`.
fn output_within(mut command: Command, timeout: Duration) -> Result<Output> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {command:?}"))?;
    let started = Instant::now();
    while child.try_wait()?.is_none() {
        if started.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{command:?} still ran after {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child.wait_with_output()?)
}

/// `32.5 MB`: bytes in decimal megabytes, as podman and docker print image sizes.
pub fn megabytes(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::megabytes;

    #[test]
    fn sizes_are_printed_in_decimal_megabytes() {
        assert_eq!(megabytes(32_500_000), "32.5 MB");
        assert_eq!(megabytes(0), "0.0 MB");
    }
}

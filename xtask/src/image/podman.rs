//! The container engine's command line: the user's own podman (or docker) for
//! `cargo xtask image`, or podman on private storage for the checks, which leave nothing
//! behind: every container is removed, then the storage directory.

use std::ffi::OsString;
use std::path::Path;
use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

use crate::bench::ScratchDir;

/// A container engine command with its global options.
#[derive(Debug)]
pub struct Podman {
    program: String,
    /// Options before the subcommand (`--root`, ...).
    global: Vec<OsString>,
    /// Environment it runs with (`CONTAINERS_CONF`).
    env: Vec<(&'static str, OsString)>,
    /// The private storage, removed (after the containers) when dropped.
    private: Option<ScratchDir>,
}

impl Podman {
    /// `program` (podman or docker) as the user set it up: its storage, its config.
    pub fn engine(program: &str) -> Podman {
        Podman {
            program: program.to_owned(),
            global: Vec::new(),
            env: Vec::new(),
            private: None,
        }
    }

    /// Podman with everything of its own under a scratch directory: image and container
    /// storage (the vfs driver, which works on any file system and leaves no mounts),
    /// run state, its temporary files and network configs, and a containers.conf that
    /// sets what this kind of machine needs: runc (crun fails on cgroups v1 here) and no
    /// default ulimits (the containers get the host's, see [`Podman::run_args`]).
    pub fn private() -> Result<Podman> {
        let dir = ScratchDir::new("podman")?;
        let path = dir.path();
        let conf = path.join("containers.conf");
        std::fs::write(
            &conf,
            format!(
                "[containers]\ndefault_ulimits = []\n\n\
                 [engine]\nruntime = \"runc\"\nevents_logger = \"none\"\ntmp_dir = {}\n\n\
                 [network]\nnetwork_config_dir = {}\n",
                toml_string(&path.join("tmp")),
                toml_string(&path.join("networks")),
            ),
        )
        .context("writing containers.conf")?;
        let mut global: Vec<OsString> = Vec::new();
        for (flag, value) in [
            ("--root", path.join("root").into_os_string()),
            ("--runroot", path.join("run").into_os_string()),
            ("--storage-driver", "vfs".into()),
        ] {
            global.push(flag.into());
            global.push(value);
        }
        Ok(Podman {
            program: "podman".to_owned(),
            global,
            env: vec![("CONTAINERS_CONF", conf.into_os_string())],
            private: Some(dir),
        })
    }

    /// Whether the engine is podman (whose `build` takes `--layers`), not docker.
    pub fn is_podman(&self) -> bool {
        Path::new(&self.program)
            .file_name()
            .is_some_and(|name| name == "podman")
    }

    /// The options `podman run` needs on this kind of machine: the host's ulimits
    /// (podman's default ulimit setting fails with runc here) and the host's network
    /// (no bridge to set up; the server binds loopback ports given as flags).
    pub fn run_args() -> [&'static str; 4] {
        ["--ulimit", "host", "--network", "host"]
    }

    /// The command with the global options, ready for a subcommand.
    pub fn command(&self) -> Command {
        let mut command = Command::new(&self.program);
        command.args(&self.global);
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }

    /// Runs `args`, printing the command line; output goes straight to ours.
    pub fn run_shown<S: AsRef<str>>(&self, args: &[S]) -> Result<()> {
        let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
        let quoted: Vec<String> = args
            .iter()
            .map(|arg| {
                if arg.contains(' ') {
                    format!("'{arg}'")
                } else {
                    (*arg).to_owned()
                }
            })
            .collect();
        println!("$ {} {}", self.program, quoted.join(" "));
        let status = self
            .command()
            .args(&args)
            .status()
            .with_context(|| format!("running {}", self.program))?;
        if !status.success() {
            bail!("`{} {}` failed ({status})", self.program, args.join(" "));
        }
        Ok(())
    }

    /// Runs `args` and returns their stdout, failing with their stderr.
    pub fn output<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<String> {
        let output = self.raw_output(args)?;
        if !output.status.success() {
            bail!(
                "`{} {}` failed ({}): {}",
                self.program,
                shown(args),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Runs `args` and returns whatever happened.
    pub fn raw_output<S: AsRef<std::ffi::OsStr>>(&self, args: &[S]) -> Result<Output> {
        self.command()
            .args(args)
            .output()
            .with_context(|| format!("running {} {}", self.program, shown(args)))
    }

    /// The image's size in bytes, as the engine counts it.
    pub fn image_size(&self, image: &str) -> Result<u64> {
        let text = self.output(&["image", "inspect", "--format", "{{.Size}}", image])?;
        text.trim()
            .parse()
            .with_context(|| format!("image size {text:?}"))
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        if self.private.is_none() {
            return;
        }
        // Containers first (they stop, their conmon exits), then the images; the
        // storage directory goes with `private`. Never `system reset`: it would also
        // touch the machine's own network configs.
        let _ = self.raw_output(&["rm", "--all", "--force", "--time", "0"]);
        let _ = self.raw_output(&["rmi", "--all", "--force"]);
    }
}

/// A container started by [`Container::run`], removed (killed if running) when dropped.
#[derive(Debug)]
pub struct Container<'a> {
    podman: &'a Podman,
    /// Its name.
    pub name: String,
}

impl<'a> Container<'a> {
    /// `podman run --detach --name NAME <run_args> <args>`.
    pub fn run(podman: &'a Podman, name: &str, args: &[OsString]) -> Result<Container<'a>> {
        let mut all: Vec<OsString> = ["run", "--detach", "--name", name]
            .iter()
            .chain(Podman::run_args().iter())
            .map(OsString::from)
            .collect();
        all.extend(args.iter().cloned());
        println!("$ podman run --detach --name {name} ... {}", shown(args));
        // Guard first: a run that fails half way may still have created the container.
        let container = Container {
            podman,
            name: name.to_owned(),
        };
        podman.output(&all)?;
        Ok(container)
    }

    /// The engine it runs in.
    pub fn podman(&self) -> &'a Podman {
        self.podman
    }

    /// `podman logs`: the container's stdout and stderr, apart.
    pub fn logs(&self) -> Result<(String, String)> {
        let output = self.podman.raw_output(&["logs", &self.name])?;
        Ok((
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        ))
    }

    /// A field of `podman inspect`, e.g. `{{.State.Status}}`.
    pub fn inspect(&self, format: &str) -> Result<String> {
        Ok(self
            .podman
            .output(&["inspect", "--format", format, &self.name])?
            .trim()
            .to_owned())
    }

    /// The last `count` lines of its stderr (the server's log).
    pub fn log_tail(&self, count: usize) -> String {
        let (_, stderr) = self.logs().unwrap_or_default();
        let lines: Vec<&str> = stderr.lines().collect();
        lines[lines.len().saturating_sub(count)..].join("\n")
    }
}

impl Drop for Container<'_> {
    fn drop(&mut self) {
        let _ = self
            .podman
            .raw_output(&["rm", "--force", "--time", "0", &self.name]);
    }
}

/// `path` as a TOML basic string.
fn toml_string(path: &Path) -> String {
    serde_json::Value::String(path.display().to_string()).to_string()
}

fn shown<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> String {
    args.iter()
        .map(|arg| arg.as_ref().to_string_lossy().into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

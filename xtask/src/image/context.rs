//! The build context dist/Containerfile expects, assembled in a scratch directory:
//! `rootfs/` (the binary, its shared libraries, /etc/passwd, /etc/group and the config)
//! and an empty `data/`.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use super::IMAGE_UID;
use crate::bench::ScratchDir;
use crate::sys;

/// Where the binary goes in the image (dist/Containerfile's `ENTRYPOINT`).
const BINARY_IN_IMAGE: &str = "simplepush";

/// The line of dist/container-config.toml naming the store, rewritten for a binary
/// without rocksdb.
const BACKEND_LINE: &str = "backend = \"rocksdb\"";

/// A build context, removed when dropped.
#[derive(Debug)]
pub struct BuildContext {
    dir: ScratchDir,
}

impl BuildContext {
    /// Assembles the context for `binary`, its config using the store `backend`.
    pub fn assemble(binary: &Path, backend: &str) -> Result<BuildContext> {
        let dir = ScratchDir::new("image-context")?;
        let rootfs = dir.path().join("rootfs");
        fs::create_dir_all(rootfs.join("etc/simplepush"))?;

        // A copy without debug info: the debug binary's DWARF is most of its size, and
        // the symbols stay (a backtrace still names functions).
        let copy = rootfs.join(BINARY_IN_IMAGE);
        let status = Command::new("objcopy")
            .arg("--strip-debug")
            .arg(binary)
            .arg(&copy)
            .status()
            .context("running objcopy (package binutils)")?;
        if !status.success() {
            bail!(
                "objcopy --strip-debug {} failed ({status})",
                binary.display()
            );
        }
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))?;

        for library in shared_libraries(binary)? {
            let relative = library
                .strip_prefix("/")
                .with_context(|| format!("ldd named a relative path {}", library.display()))?;
            let target = rootfs.join(relative);
            if let Some(parent) = target.parent() {
                fs::create_dir_all(parent)?;
            }
            // fs::copy follows symlinks: the file itself lands at the path the loader
            // asks for (/lib64/ld-linux-x86-64.so.2 is a link on the host).
            fs::copy(&library, &target)
                .with_context(|| format!("copying {}", library.display()))?;
        }

        fs::write(rootfs.join("etc/passwd"), passwd())?;
        fs::write(rootfs.join("etc/group"), group())?;
        let config = fs::read_to_string(sys::workspace_root().join("dist/container-config.toml"))
            .context("reading dist/container-config.toml")?;
        fs::write(
            rootfs.join("etc/simplepush/config.toml"),
            config_for(&config, backend)?,
        )?;

        // Only the server's user may read the store (it warns otherwise).
        let data = dir.path().join("data");
        fs::create_dir(&data)?;
        fs::set_permissions(&data, fs::Permissions::from_mode(0o700))?;
        Ok(BuildContext { dir })
    }

    /// The context directory, to pass to `podman build`.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes of the binary as it goes into the image.
    pub fn binary_size(&self) -> Result<u64> {
        Ok(fs::metadata(self.dir.path().join("rootfs").join(BINARY_IN_IMAGE))?.len())
    }
}

/// /etc/passwd of the image: root (files are owned by it) and the server's user.
fn passwd() -> String {
    format!(
        "root:x:0:0:root:/root:/sbin/nologin\n\
         simplepush:x:{IMAGE_UID}:{IMAGE_UID}:simplepush:/data:/sbin/nologin\n"
    )
}

/// /etc/group of the image.
fn group() -> String {
    format!("root:x:0:\nsimplepush:x:{IMAGE_UID}:\n")
}

/// dist/container-config.toml (`text`) with its store set to `backend`.
fn config_for(text: &str, backend: &str) -> Result<String> {
    let lines = text
        .lines()
        .filter(|line| line.trim() == BACKEND_LINE)
        .count();
    if lines != 1 {
        bail!("dist/container-config.toml must have the line `{BACKEND_LINE}` exactly once");
    }
    Ok(text
        .lines()
        .map(|line| {
            if line.trim() == BACKEND_LINE {
                format!("backend = \"{backend}\"")
            } else {
                line.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n")
}

/// The shared libraries `binary` loads, the dynamic loader included, as `ldd` lists them.
fn shared_libraries(binary: &Path) -> Result<Vec<PathBuf>> {
    let output = Command::new("ldd")
        .arg(binary)
        .output()
        .context("running ldd")?;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        // A static binary needs nothing besides itself.
        if text.contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}{}",
            binary.display(),
            text,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    parse_ldd(&text)
}

/// The paths in `ldd` output: `name => /path (0x…)` and `/path (0x…)` lines; the vDSO
/// (no file) is skipped; a library `not found` is an error.
fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for line in text.lines().map(str::trim).filter(|line| !line.is_empty()) {
        let target = match line.split_once("=>") {
            Some((name, target)) => {
                let target = target.trim();
                if target.starts_with("not found") {
                    bail!("ldd: {} is not found", name.trim());
                }
                target
            }
            None => line,
        };
        let path = target.split_whitespace().next().unwrap_or_default();
        if path.starts_with('/') {
            paths.push(PathBuf::from(path));
        }
    }
    Ok(paths)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{config_for, parse_ldd};

    #[test]
    fn ldd_output_gives_every_library_and_the_loader_but_not_the_vdso() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibstdc++.so.6 => /lib/x86_64-linux-gnu/libstdc++.so.6 (0x00007f01)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f02)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f03)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f04)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                "/lib/x86_64-linux-gnu/libstdc++.so.6",
                "/lib/x86_64-linux-gnu/libgcc_s.so.1",
                "/lib/x86_64-linux-gnu/libc.so.6",
                "/lib64/ld-linux-x86-64.so.2",
            ]
            .map(PathBuf::from)
        );
    }

    #[test]
    fn a_missing_library_is_an_error() {
        let err = parse_ldd("\tlibfoo.so.1 => not found\n").unwrap_err();
        assert!(err.to_string().contains("libfoo.so.1"), "{err}");
    }

    #[test]
    fn the_repository_config_switches_backend_and_keeps_the_rest() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../dist/container-config.toml");
        let text = std::fs::read_to_string(path).unwrap();
        assert_eq!(config_for(&text, "rocksdb").unwrap(), text);
        let sqlite = config_for(&text, "sqlite").unwrap();
        assert!(sqlite.contains("\nbackend = \"sqlite\"\n"), "{sqlite}");
        assert!(!sqlite.contains("\"rocksdb\""));
        assert!(sqlite.contains("path = \"/data\"") && sqlite.contains("format = \"json\""));
        assert!(config_for("[store]\n", "sqlite").is_err());
    }
}

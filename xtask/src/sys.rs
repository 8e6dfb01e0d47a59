//! Small facts about the machine xtask runs on: root or not, what is on PATH, where cargo is.

use std::env;
use std::ffi::OsString;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Whether this process runs as root (effective uid 0), asked of `id -u`.
///
/// Anything that fails to answer counts as "not root": the worst case is an error message
/// telling the user which command to run, never an `apt-get` we have no right to run.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The first executable file called `name` in the directories of `PATH`.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH")?;
    env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    path.metadata()
        .map(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The cargo that runs xtask (cargo sets `CARGO` for `cargo run`), else `cargo` from PATH.
///
/// Using the same cargo keeps the toolchain the caller picked (rustup override, `+nightly`).
pub fn cargo() -> OsString {
    env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"))
}

/// The workspace root: the parent of this crate's directory.
pub fn workspace_root() -> &'static Path {
    static ROOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    ROOT.get_or_init(|| {
        // `cargo run` (the `cargo xtask` alias) names the manifest's folder at run time.
        // The folder baked in at compile time is only the fallback: with a target dir
        // shared by several clones, cargo may reuse an xtask built in another clone, and
        // its baked-in folder is that clone's.
        let xtask_dir = std::env::var_os("CARGO_MANIFEST_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
        xtask_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or(xtask_dir)
    })
}

#[cfg(test)]
mod tests {
    use super::{find_on_path, workspace_root};

    #[test]
    fn workspace_root_holds_the_root_manifest_and_xtask() {
        let root = workspace_root();
        assert!(root.join("Cargo.toml").is_file());
        assert!(root.join("xtask").join("Cargo.toml").is_file());
    }

    #[test]
    fn find_on_path_finds_sh_and_not_a_made_up_name() {
        assert!(find_on_path("sh").is_some());
        assert!(find_on_path("no-such-tool-xtask-7f3a").is_none());
    }
}

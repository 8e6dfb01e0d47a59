//! Preflight: the system packages the chosen legs need, installed with apt-get when root.

use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::sys;

/// A system tool some legs need, and the Debian package that provides it.
#[derive(Debug, Clone, Copy)]
struct Requirement {
    /// What is missing, in words.
    what: &'static str,
    /// The Debian package providing it.
    package: &'static str,
    /// Whether it is present on this machine.
    present: fn() -> bool,
}

const MEMCACHED: Requirement = Requirement {
    what: "memcached on PATH (memcache tests)",
    package: "memcached",
    present: || sys::find_on_path("memcached").is_some(),
};

const LIBCLANG: Requirement = Requirement {
    what: "libclang (bindgen, for librocksdb-sys)",
    package: "libclang-dev",
    present: || find_libclang().is_some(),
};

const CXX: Requirement = Requirement {
    what: "a C++ compiler (RocksDB)",
    package: "g++",
    present: || {
        env::var_os("CXX").is_some()
            || ["c++", "g++", "clang++"]
                .iter()
                .any(|name| sys::find_on_path(name).is_some())
    },
};

const CHROMIUM: Requirement = Requirement {
    what: "headless Chromium (the dashboard's browser test)",
    package: "chromium",
    present: || sys::find_on_path("chromium").is_some(),
};

const PKG_CONFIG: Requirement = Requirement {
    what: "pkg-config (openssl-sys finds OpenSSL with it, for the WebPush tests' ece)",
    package: "pkg-config",
    present: || sys::find_on_path("pkg-config").is_some(),
};

const LIBSSL: Requirement = Requirement {
    what: "OpenSSL headers (openssl-sys, for the WebPush tests' ece)",
    package: "libssl-dev",
    present: || {
        env::var_os("OPENSSL_DIR").is_some()
            || Command::new("pkg-config")
                .args(["--exists", "openssl"])
                .status()
                .is_ok_and(|status| status.success())
    },
};

const FIREFOX: Requirement = Requirement {
    what: "Firefox ESR (the `all` leg's Firefox check, `cargo xtask firefox`)",
    package: "firefox-esr",
    present: crate::firefox::installed,
};

const PODMAN: Requirement = Requirement {
    what: "podman (the `all` leg's image step, `cargo xtask image-test`)",
    package: "podman",
    present: || sys::find_on_path("podman").is_some(),
};

const RUNC: Requirement = Requirement {
    what: "runc (podman's runtime in the image step; crun fails on cgroups v1)",
    package: "runc",
    present: || {
        sys::find_on_path("runc").is_some()
            || ["/usr/sbin/runc", "/usr/bin/runc"]
                .iter()
                .any(|path| Path::new(path).is_file())
    },
};

const SYSTEMD_ANALYZE: Requirement = Requirement {
    what: "systemd-analyze (the image step verifies dist/simplepush.service)",
    package: "systemd",
    present: || sys::find_on_path("systemd-analyze").is_some(),
};

const OBJCOPY: Requirement = Requirement {
    what: "objcopy (the image step strips the debug binary's debug info)",
    package: "binutils",
    present: || sys::find_on_path("objcopy").is_some(),
};

/// What the image step needs.
const IMAGE: [Requirement; 4] = [PODMAN, RUNC, SYSTEMD_ANALYZE, OBJCOPY];

/// Makes sure what the chosen legs need is installed, printing what it checks and does;
/// `all_leg`: also what the end of the `all` leg needs: Firefox ESR for the Firefox
/// check, podman, runc, systemd-analyze and objcopy for the image step.
///
/// Every leg needs libclang and a C++ compiler: `--workspace` builds every member, the
/// simplepush-rocksdb crate included, whatever the root package's features; every leg
/// runs the dashboard's browser test, which needs Chromium, and xtask's own tests, which
/// start memcached; every leg builds the tests, whose WebPush client links OpenSSL
/// (through `ece`), found with pkg-config.
///
/// Missing packages are installed with `apt-get` when running as root; otherwise the error
/// names the exact command to run.
pub fn run(all_leg: bool) -> Result<()> {
    let mut needed = vec![LIBCLANG, CXX, CHROMIUM, MEMCACHED, PKG_CONFIG, LIBSSL];
    if all_leg {
        needed.push(FIREFOX);
        needed.extend(IMAGE);
    }
    ensure(needed)
}

/// Makes sure what `cargo xtask image-test` needs is installed.
pub fn image() -> Result<()> {
    ensure(IMAGE.to_vec())
}

/// Makes sure what `cargo xtask firefox` needs is installed: Firefox ESR and memcached
/// (the cluster case).
pub fn firefox() -> Result<()> {
    ensure(vec![FIREFOX, MEMCACHED])
}

/// Installs the missing ones of `needed` when root, else fails naming the command to run.
fn ensure(needed: Vec<Requirement>) -> Result<()> {
    let missing: Vec<Requirement> = needed.into_iter().filter(|req| !(req.present)()).collect();
    if missing.is_empty() {
        println!("preflight: everything the chosen legs need is installed");
        return Ok(());
    }
    for req in &missing {
        println!("preflight: missing {} (package {})", req.what, req.package);
    }

    let packages: Vec<&str> = missing.iter().map(|req| req.package).collect();
    if !sys::is_root() {
        bail!(
            "missing system packages; install them with:\n    \
             sudo apt-get update && sudo apt-get install -y {}",
            packages.join(" ")
        );
    }

    println!(
        "preflight: running as root, installing {}",
        packages.join(" ")
    );
    apt_get(&["update"])?;
    let mut install = vec!["install", "-y"];
    install.extend(&packages);
    apt_get(&install)?;

    let still_missing: Vec<&str> = missing
        .iter()
        .filter(|req| !(req.present)())
        .map(|req| req.what)
        .collect();
    if !still_missing.is_empty() {
        bail!(
            "still missing after apt-get install: {}",
            still_missing.join(", ")
        );
    }
    println!("preflight: installed {}", packages.join(" "));
    Ok(())
}

fn apt_get(args: &[&str]) -> Result<()> {
    println!("preflight: apt-get {}", args.join(" "));
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("could not run apt-get (is this a Debian-like system?)")?;
    if !status.success() {
        bail!("`apt-get {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

/// A libclang shared library where bindgen (through clang-sys) will look for one:
/// `LIBCLANG_PATH` if set, else the usual Debian and LLVM install directories.
pub fn find_libclang() -> Option<PathBuf> {
    if let Some(path) = env::var_os("LIBCLANG_PATH") {
        let path = PathBuf::from(path);
        if path.is_file() {
            return Some(path);
        }
        return find_libclang_in(&path);
    }

    let mut dirs = vec![
        PathBuf::from("/usr/lib"),
        PathBuf::from("/usr/lib64"),
        PathBuf::from("/usr/local/lib"),
    ];
    // /usr/lib/llvm-14/lib (Debian's LLVM) and /usr/lib/x86_64-linux-gnu (multiarch).
    if let Ok(entries) = fs::read_dir("/usr/lib") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("llvm-") {
                dirs.push(entry.path().join("lib"));
            } else if name.ends_with("-linux-gnu") {
                dirs.push(entry.path());
            }
        }
    }
    dirs.iter().find_map(|dir| find_libclang_in(dir))
}

fn find_libclang_in(dir: &Path) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.path())
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(is_libclang_name)
        })
}

/// `libclang.so`, `libclang.so.1`, `libclang-14.so.1`: the names clang-sys accepts
/// (but not `libclang-cpp.so`, the C++ API, which bindgen cannot use).
fn is_libclang_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("libclang") else {
        return false;
    };
    if rest.starts_with("-cpp") {
        return false;
    }
    rest.starts_with(".so") || (rest.starts_with('-') && rest.contains(".so"))
}

#[cfg(test)]
mod tests {
    use super::is_libclang_name;

    #[test]
    fn libclang_names_match_what_clang_sys_loads() {
        for name in [
            "libclang.so",
            "libclang.so.1",
            "libclang-14.so.1",
            "libclang-14.0.6.so",
        ] {
            assert!(is_libclang_name(name), "{name} should match");
        }
        for name in [
            "libclang-cpp.so.14",
            "libclang.a",
            "libclangBasic.a",
            "libc.so.6",
        ] {
            assert!(!is_libclang_name(name), "{name} should not match");
        }
    }
}

//! Configuration of the local bubblewrap backend: every setting a typed field with a flag, an
//! `ENV_SERVER_*` variable and a default (shown by `env-server serve --help`).

use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// Network of local sandboxes (server configuration only; never chosen by a client).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum LocalNetwork {
    /// Own network namespace with only loopback.
    #[default]
    None,
    /// The host's network (bwrap without `--unshare-net`).
    Egress,
}

/// Whether sandboxes are put in cgroup v1 `pids`/`memory` groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum CgroupMode {
    /// Where the controllers are writable (else limits fall back to rlimits, logged once).
    #[default]
    Auto,
    /// Never.
    Off,
}

/// Settings of the local bubblewrap backend.
#[derive(Debug, Clone, Args)]
pub struct LocalConfig {
    /// Where the per-episode marker directories (owner and labels, for the orphan sweep) are
    /// created (default: the system temp dir). A sandbox's files are in its own tmpfs mounts,
    /// never here.
    #[arg(long = "sandbox-root", env = "ENV_SERVER_SANDBOX_ROOT")]
    pub sandbox_root: Option<PathBuf>,

    /// bubblewrap executable (a bare name is looked up on PATH).
    #[arg(
        long = "bwrap-path",
        env = "ENV_SERVER_BWRAP_PATH",
        default_value = "bwrap"
    )]
    pub bwrap_path: PathBuf,

    /// The in-sandbox supervisor binary (default: `env-sbx` next to the server binary).
    #[arg(long = "sbx-path", env = "ENV_SERVER_SBX_PATH")]
    pub sbx_path: Option<PathBuf>,

    /// Root filesystem whose /usr, /bin, /sbin, /lib* sandboxes see read-only, and whose /etc
    /// lends the few entries tools need (certificates, alternatives, ld.so cache…).
    #[arg(
        long = "local-rootfs",
        env = "ENV_SERVER_LOCAL_ROOTFS",
        default_value = "/"
    )]
    pub rootfs: PathBuf,

    /// Network of local sandboxes.
    #[arg(long = "local-network", env = "ENV_SERVER_LOCAL_NETWORK", value_enum, default_value_t = LocalNetwork::None)]
    pub network: LocalNetwork,

    /// First host uid of the range from which a root server gives each sandbox its own
    /// unprivileged uid (no passwd entry needed).
    #[arg(long = "local-uid-base", env = "ENV_SERVER_LOCAL_UID_BASE", default_value_t = 200_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub uid_base: u32,

    /// Number of uids in that range: at most this many live sandboxes per machine.
    #[arg(long = "local-uid-count", env = "ENV_SERVER_LOCAL_UID_COUNT", default_value_t = 65_536, value_parser = clap::value_parser!(u32).range(1..))]
    pub uid_count: u32,

    /// cgroup v1 `pids`/`memory` groups per sandbox (`auto`: where writable).
    #[arg(long = "local-cgroups", env = "ENV_SERVER_LOCAL_CGROUPS", value_enum, default_value_t = CgroupMode::Auto)]
    pub cgroups: CgroupMode,

    /// Processes per sandbox when the sandbox spec sets none (cgroup `pids.max` and
    /// `RLIMIT_NPROC`, which counts per sandbox: each has its own user namespace); 0 = not
    /// limited.
    #[arg(
        long = "local-pids-max",
        env = "ENV_SERVER_LOCAL_PIDS_MAX",
        default_value_t = 1024
    )]
    pub pids_max: u64,

    /// Memory per sandbox in bytes when the spec sets none (cgroup); 0 = not limited.
    #[arg(long = "local-memory-bytes", env = "ENV_SERVER_LOCAL_MEMORY_BYTES", default_value_t = 4 << 30)]
    pub memory_bytes: u64,

    /// Largest file a sandbox process may write, in bytes (`RLIMIT_FSIZE`), when the spec sets
    /// none; 0 = not limited.
    #[arg(long = "local-file-bytes", env = "ENV_SERVER_LOCAL_FILE_BYTES", default_value_t = 4 << 30)]
    pub file_bytes: u64,

    /// Open files per sandbox process (`RLIMIT_NOFILE`) when the spec sets none; 0 = inherited.
    #[arg(
        long = "local-open-files",
        env = "ENV_SERVER_LOCAL_OPEN_FILES",
        default_value_t = 4096
    )]
    pub open_files: u64,

    /// Size of the sandbox's work dir, bytes: a tmpfs of its own (in memory, charged to the
    /// sandbox's memory cgroup); a command that fills it gets `ENOSPC`.
    #[arg(long = "local-work-dir-bytes", env = "ENV_SERVER_LOCAL_WORK_DIR_BYTES", default_value_t = 768 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub work_dir_bytes: u64,

    /// Size of the sandbox's `/tmp` tmpfs, bytes (`/var/tmp`, `/run` and `/dev/shm` are links
    /// into it, so it bounds them too).
    #[arg(long = "local-tmp-bytes", env = "ENV_SERVER_LOCAL_TMP_BYTES", default_value_t = 256 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub tmp_bytes: u64,

    /// How long creating a sandbox (bwrap start and supervisor handshake) may take, ms.
    #[arg(long = "local-create-timeout-ms", env = "ENV_SERVER_LOCAL_CREATE_TIMEOUT_MS", default_value_t = 10_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub create_timeout_ms: u64,

    /// First wait before a failed sandbox cleanup (episode directory, cgroups, leftover
    /// processes) is retried in the background, ms; each later wait doubles, up to 5 s
    /// (`docs/cleanup.md`).
    #[arg(long = "local-cleanup-retry-ms", env = "ENV_SERVER_LOCAL_CLEANUP_RETRY_MS", default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub cleanup_retry_ms: u64,

    /// Background retries of a failed sandbox cleanup before it is given up and left to the
    /// next start's orphan sweep.
    #[arg(long = "local-cleanup-retries", env = "ENV_SERVER_LOCAL_CLEANUP_RETRIES", default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub cleanup_retries: u32,
}

impl Default for LocalConfig {
    fn default() -> Self {
        Self {
            sandbox_root: None,
            bwrap_path: PathBuf::from("bwrap"),
            sbx_path: None,
            rootfs: PathBuf::from("/"),
            network: LocalNetwork::None,
            uid_base: 200_000,
            uid_count: 65_536,
            cgroups: CgroupMode::Auto,
            pids_max: 1024,
            memory_bytes: 4 << 30,
            file_bytes: 4 << 30,
            open_files: 4096,
            work_dir_bytes: 768 << 20,
            tmp_bytes: 256 << 20,
            create_timeout_ms: 10_000,
            cleanup_retry_ms: 100,
            cleanup_retries: 30,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        local: LocalConfig,
    }

    #[test]
    fn default_matches_the_flags() {
        let parsed = Cli::parse_from(["x"]).local;
        let default = LocalConfig::default();
        assert_eq!(format!("{parsed:?}"), format!("{default:?}"));
    }
}

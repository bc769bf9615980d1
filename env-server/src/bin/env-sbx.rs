//! `env-sbx`: the in-sandbox supervisor of the local bubblewrap backend (`SANDBOXES.md` §2.2).
//! bwrap runs it read-only at `/.openenv/sbx` as the sandbox's PID 1; the logic lives in
//! [`env_server::sandbox::local::sbx`].

fn main() -> std::process::ExitCode {
    env_server::sandbox::local::sbx::main()
}

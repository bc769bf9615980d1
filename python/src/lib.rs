//! `openenv_rs._native`: the Python bindings of `env-client` (wheel `openenv-rs`, module
//! `openenv_rs`), built by maturin as one abi3 wheel (Python ≥ 3.9).
//!
//! Layout:
//! - [`client`]: `EnvClient` (blocking, releases the GIL while it waits) and
//!   `AsyncEnvClient` (asyncio awaitables), both over one `env_client::EnvClient`;
//! - [`pool`]: `Pool`, many concurrent episodes over `env_client::Pool`;
//! - [`results`]: `StepResult`, `VerifyResult`, `Tool`, `ToolCallResult`, and [`results::Reply`],
//!   the one conversion of a Rust result into a Python value or exception;
//! - [`errors`]: the exception hierarchy and the one function that maps every failure;
//! - [`convert`]: Python objects ↔ JSON values;
//! - [`runtime`]: the process's Tokio runtime (the blocking client's), rebuilt in a forked
//!   child;
//! - [`bridge`]: asyncio awaitables, driven on the event loop's thread.
//!
//! Architecture invariant: the bindings speak no protocol of their own; every frame is built
//! and parsed by `env_client`. The Python package around this module (`openenv_rs/`) adds
//! pure-Python layers only: `Pool.session()`/`Pool.run()`, the TRL adapter
//! (`openenv_rs.trl`) and the Terminus harness helpers (`openenv_rs.terminus`).

pub(crate) mod bridge;
pub mod client;
pub(crate) mod convert;
pub(crate) mod errors;
pub mod pool;
pub mod results;
pub(crate) mod runtime;

use pyo3::prelude::*;

/// The extension module `openenv_rs._native`.
#[pymodule]
#[pyo3(name = "_native")]
fn native(module: &Bound<'_, PyModule>) -> PyResult<()> {
    module.add_class::<client::EnvClient>()?;
    module.add_class::<client::AsyncEnvClient>()?;
    module.add_class::<pool::Pool>()?;
    module.add_class::<results::StepResult>()?;
    module.add_class::<results::VerifyResult>()?;
    module.add_class::<results::Tool>()?;
    module.add_class::<results::ToolCallResult>()?;
    errors::register(module)?;
    module.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Which cargo profile built the module (benchmarks refuse a debug build).
    module.add(
        "__build__",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        },
    )?;
    Ok(())
}

//! `env-server`: an OpenEnv-compatible environment server for agentic reinforcement learning.
//!
//! Trainers open one WebSocket per episode (`/ws`) and drive `reset` → `step` → `verify`; the
//! server runs the environment and computes the reward inside its own boundary. The wire types
//! come from [`env_client::protocol`]; this crate converts at the edge.
//!
//! Layout:
//! - [`config`]: [`config::ServeConfig`] and [`config::Limits`], every limit a typed field;
//! - [`server`]: the axum routes, the `/ws` and `/mcp` handlers, [`server::run`];
//! - [`session`]: the session table, admission, lifecycle and the connection loop;
//! - [`mcp`]: JSON-RPC dispatch shared by `/ws` `mcp` frames, the `/mcp` WebSocket and `POST /mcp`;
//! - [`envs`]: the [`envs::Environment`] trait and the environments (`echo`, `terminal`);
//! - [`sandbox`]: the [`sandbox::Sandbox`] contract and its backends (`local`: bubblewrap);
//! - [`pyjson`]: Python `json.dumps` layout for `/mcp` WebSocket replies;
//! - [`panics`]: the panic hook that logs one bounded line per panic;
//! - [`fuzz`]: every inbound parser driven with mutated input (the fuzz test and benchmark).

pub mod config;
pub mod envs;
pub mod fuzz;
pub mod mcp;
pub mod panics;
pub mod pyjson;
pub mod sandbox;
pub mod server;
pub mod session;

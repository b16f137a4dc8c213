//! Every integration test of the crate, linked once (one binary instead of one per file).
//! Each module is one area; `common` holds what they share. Run one area with
//! `cargo test --test it -- MODULE::`.

mod common;

mod batching;
mod cli;
mod cli_errors;
mod concurrency;
mod crash;
mod custom_calls;
mod deploy;
mod devices;
mod fidelity;
mod frozen;
mod generate;
mod hoist;
mod hostile;
mod inputs;
mod hostile_serve;
mod lapack;
mod layer;
mod mutation;
mod nnx;
mod pjrt;
mod plugin_cli;
mod repo;
mod serve;
mod serve_batching;
mod state_lost;
mod train;
mod untrusted;
mod weights;

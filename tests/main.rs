//! Integration tests: the `unoflow` binary driven the way a user drives it. One test binary
//! (each would link the whole dependency tree), one module per area.

mod chat_server;
mod support;

mod curation;
mod docs;
mod errors;
mod evaluation;
mod execution;
mod gang;
mod generate;
mod hardening;
mod hardening_store;
mod identity;
mod models;
mod operator_outputs;
mod planning;
mod queries;
mod real_weights;
mod recipe;
mod remote;
mod resume;
mod safety;
mod scale;
mod serve;
mod serve_safety;
mod slurm;
mod training;
mod user_operators;
mod validation;
mod vars;
mod views;

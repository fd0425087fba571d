//! The ec2lab control plane: what `ec2lab serve` runs.
//!
//! Layers, one way: `api` (the EC2 Query protocol: SigV4, form parameters,
//! XML, errors, the action table) calls the domain (`model`: ids, instance
//! types, states and their transitions, filters), which persists through
//! `db` (SQLite, migrations, typed queries) and acts on the host through
//! `supervisor` (one ec2lab-vmm process per running instance).

pub mod api;
pub mod client;
pub mod config;
pub mod db;
pub mod keypairs;
pub mod model;
pub mod supervisor;

//! The ec2lab control plane: what `ec2lab serve` runs.
//!
//! Layers, one way: `api` (the EC2 Query protocol: SigV4, form parameters,
//! XML, errors, the action table) calls the domain (`model`: ids, instance
//! types, states and their transitions, filters), which persists through
//! `db` (SQLite, migrations, typed queries) and acts on the host through
//! `supervisor` (one ec2lab-vmm process per running instance) and
//! `network` (each VPC a namespace, each subnet a bridge, each ENI a tap).

pub mod addresses;
pub mod api;
pub mod backoff;
pub mod cgroup;
pub mod checkin;
pub mod client;
pub mod config;
pub mod connect;
pub mod daemon;
pub mod db;
pub mod groups;
pub mod hibernate;
pub mod images;
pub mod instance_connect;
pub mod instances;
pub mod keypairs;
pub mod lifecycle;
pub mod metadata;
pub mod model;
pub mod network;
pub mod reserve;
pub mod supervisor;

/// Locks a mutex, recovering the data if a panicking thread poisoned it:
/// the sets it guards stay consistent at every step.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

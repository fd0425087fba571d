//! The EC2 Query protocol (form-encoded POST, `Action`/`Version`, XML
//! responses in the 2016-11-15 namespace, EC2 error XML), and the EC2
//! Instance Connect JSON API on the same endpoint.

pub mod actions;
pub mod error;
pub mod instance_connect;
pub mod listener;
pub mod query;
pub mod server;
pub mod shapes;
pub mod sigv4;
pub mod xml;

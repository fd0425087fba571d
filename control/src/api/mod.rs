//! The EC2 Query protocol (form-encoded POST, `Action`/`Version`, XML
//! responses in the 2016-11-15 namespace, EC2 error XML).

pub mod actions;
pub mod error;
pub mod listener;
pub mod query;
pub mod server;
pub mod shapes;
pub mod sigv4;
pub mod xml;

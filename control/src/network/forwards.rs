//! Loopback port forwards (DESIGN.md "Networking"): the host reaches an
//! instance's public address without any route to the uplink. For each
//! public address in use the daemon listens on `127.0.0.1:PORT` in the
//! host's namespace and carries each connection to `ADDRESS:22` from
//! inside the uplink namespace, i.e. as a connection from the internet:
//! the instance's security groups decide, exactly as for anyone else
//! there (a forward to an address whose group does not open port 22
//! connects, then closes when the SYN goes unanswered).
//!
//! PORT is the forward base plus the address's offset in the public pool
//! (198.51.100.3 in 198.51.100.0/24 with base 22000 is 22003), so it stays
//! the same for an address across daemon restarts and follows an Elastic
//! IP. What is open is written to `<data>/forwards`, one line each:
//! `127.0.0.1:22003 198.51.100.3:22 i-0123456789abcdef0`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

use super::netns;
use crate::model::vpc::Cidr;

/// The port forwarded to on the public address.
pub const TARGET_PORT: u16 = 22;
/// The forward base when none is given: 127.0.0.1:22000 + offset.
pub const DEFAULT_BASE: u16 = 22_000;
/// Connections open at once through one forward; more are closed.
pub const MAX_CONNECTIONS: usize = 16;
/// How long reaching the instance may take (a dropped SYN ends here).
const CONNECT_DEADLINE: Duration = Duration::from_secs(10);

/// Errors of port forwards.
#[derive(Debug, thiserror::Error)]
pub enum ForwardsError {
    /// The pool does not fit the ports above the base.
    #[error(
        "public pool {pool} has {size} addresses, and ports {base} and up have room for {room} \
         (a smaller pool, a lower --forward-base, or --forward-base 0 for no forwards)"
    )]
    PoolTooLarge {
        /// The pool.
        pool: String,
        /// Its addresses.
        size: u64,
        /// The base.
        base: u16,
        /// Ports left above the base.
        room: u64,
    },
}

/// One open forward.
#[derive(Debug)]
struct Forward {
    port: u16,
    instance: String,
    task: AbortHandle,
}

impl Drop for Forward {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The lab's loopback forwards.
#[derive(Debug)]
pub struct PortForwards {
    base: u16,
    pool: Cidr,
    uplink_ns: String,
    runtime: tokio::runtime::Handle,
    table: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// What each VPC namespace publishes: address → instance.
    published: HashMap<String, BTreeMap<Ipv4Addr, String>>,
    open: BTreeMap<Ipv4Addr, Forward>,
}

impl PortForwards {
    /// Forwards from `127.0.0.1:(base + offset)` to addresses of `pool`,
    /// connecting from namespace `uplink_ns`; the table goes to `table`.
    pub fn new(
        base: u16,
        pool: Cidr,
        uplink_ns: &str,
        table: PathBuf,
        runtime: tokio::runtime::Handle,
    ) -> Result<Self, ForwardsError> {
        let size = 1u64 << (32 - u32::from(pool.prefix));
        let room = u64::from(u16::MAX) - u64::from(base) + 1;
        if base == 0 || size > room {
            return Err(ForwardsError::PoolTooLarge {
                pool: pool.to_string(),
                size,
                base,
                room,
            });
        }
        let forwards = Self {
            base,
            pool,
            uplink_ns: uplink_ns.to_string(),
            runtime,
            table,
            state: Mutex::new(State::default()),
        };
        // Nothing is open yet: a table left by an earlier daemon goes.
        forwards.write_table(&State::default());
        Ok(forwards)
    }

    /// The loopback port of public address `address` (None outside the
    /// pool).
    pub fn port_for(&self, address: Ipv4Addr) -> Option<u16> {
        let offset = u32::from(address).checked_sub(u32::from(self.pool.base))?;
        if offset >> (32 - u32::from(self.pool.prefix)) != 0 {
            return None;
        }
        u16::try_from(offset).ok()?.checked_add(self.base)
    }

    /// Makes `public` (address → instance) what VPC namespace `vpc_ns`
    /// publishes, and the open forwards those of every VPC. A port that
    /// cannot be bound is logged and left out: forwards are a convenience
    /// and never stop a launch.
    pub fn publish(&self, vpc_ns: &str, public: &[(Ipv4Addr, String)]) {
        let mut state = crate::lock(&self.state);
        if public.is_empty() {
            state.published.remove(vpc_ns);
        } else {
            state
                .published
                .insert(vpc_ns.to_string(), public.iter().cloned().collect());
        }
        let wanted: BTreeMap<Ipv4Addr, String> = state
            .published
            .values()
            .flat_map(|m| m.iter().map(|(a, i)| (*a, i.clone())))
            .collect();
        let gone: BTreeSet<Ipv4Addr> = state
            .open
            .iter()
            .filter(|(a, f)| wanted.get(a) != Some(&f.instance))
            .map(|(a, _)| *a)
            .collect();
        let mut changed = !gone.is_empty();
        for address in gone {
            state.open.remove(&address);
        }
        for (address, instance) in wanted {
            if state.open.contains_key(&address) {
                continue;
            }
            let Some(port) = self.port_for(address) else {
                continue;
            };
            match self.listen(port, address) {
                Ok(task) => {
                    log::info!(
                        "forwarding 127.0.0.1:{port} to {address}:{TARGET_PORT} ({instance})"
                    );
                    state.open.insert(
                        address,
                        Forward {
                            port,
                            instance,
                            task,
                        },
                    );
                    changed = true;
                }
                Err(e) => log::warn!("no forward to {address}: 127.0.0.1:{port}: {e}"),
            }
        }
        // Rules change far more often than addresses: the table is
        // rewritten only when a forward opened or closed.
        if changed {
            self.write_table(&state);
        }
    }

    fn listen(&self, port: u16, address: Ipv4Addr) -> std::io::Result<AbortHandle> {
        let listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, port))?;
        listener.set_nonblocking(true)?;
        let uplink_ns = self.uplink_ns.clone();
        let task = self.runtime.spawn(async move {
            match TcpListener::from_std(listener) {
                Ok(listener) => accept(listener, uplink_ns, address).await,
                Err(e) => log::error!("forward to {address}: {e}"),
            }
        });
        Ok(task.abort_handle())
    }

    /// Rewrites the table (a new file renamed over the old).
    fn write_table(&self, state: &State) {
        let mut text = String::new();
        for (address, f) in &state.open {
            text.push_str(&format!(
                "127.0.0.1:{} {address}:{TARGET_PORT} {}\n",
                f.port, f.instance
            ));
        }
        let fresh = self.table.with_extension("new");
        let written =
            std::fs::write(&fresh, text).and_then(|()| std::fs::rename(&fresh, &self.table));
        if let Err(e) = written {
            log::warn!("{}: {e}", self.table.display());
        }
    }
}

/// Carries each connection on `listener` to `address:22`, connecting from
/// inside namespace `uplink_ns`.
async fn accept(listener: TcpListener, uplink_ns: String, address: Ipv4Addr) {
    let what = format!("forward to {address}");
    super::accept::bounded(listener, MAX_CONNECTIONS, what, move |mut client| {
        let ns = uplink_ns.clone();
        async move {
            let target = SocketAddr::from((address, TARGET_PORT));
            // A socket of the uplink's namespace, connected on a thread
            // that entered it; the runtime's threads never change
            // namespace.
            let connected = tokio::task::spawn_blocking(move || {
                netns::run_in(&ns, move || {
                    let s = std::net::TcpStream::connect_timeout(&target, CONNECT_DEADLINE)?;
                    s.set_nonblocking(true)?;
                    Ok::<_, std::io::Error>(s)
                })
            })
            .await;
            let server = match connected {
                Ok(Ok(Ok(s))) => TcpStream::from_std(s),
                Ok(Ok(Err(e))) => Err(e),
                Ok(Err(e)) => Err(std::io::Error::other(e.to_string())),
                Err(e) => Err(std::io::Error::other(e.to_string())),
            };
            match server {
                Ok(mut server) => {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
                Err(e) => log::info!("forward to {target}: {e}"),
            }
        }
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forwards(base: u16, pool: &str) -> Result<PortForwards, ForwardsError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        PortForwards::new(
            base,
            Cidr::parse(pool).expect("pool"),
            "none",
            "/nonexistent/forwards".into(),
            runtime.handle().clone(),
        )
    }

    #[test]
    fn a_port_is_the_base_plus_the_addresss_offset_in_the_pool() {
        let f = forwards(22_000, "198.51.100.0/24").expect("fits");
        assert_eq!(f.port_for(Ipv4Addr::new(198, 51, 100, 3)), Some(22_003));
        assert_eq!(f.port_for(Ipv4Addr::new(198, 51, 100, 255)), Some(22_255));
        assert_eq!(f.port_for(Ipv4Addr::new(198, 51, 101, 0)), None);
        assert_eq!(f.port_for(Ipv4Addr::new(198, 51, 99, 255)), None);
        let f = forwards(40_000, "10.64.0.0/18").expect("fits");
        assert_eq!(f.port_for(Ipv4Addr::new(10, 64, 63, 255)), Some(56_383));
    }

    #[test]
    fn a_pool_must_fit_above_the_base() {
        assert!(forwards(65_280, "198.51.100.0/24").is_ok());
        assert!(matches!(
            forwards(65_281, "198.51.100.0/24"),
            Err(ForwardsError::PoolTooLarge {
                size: 256,
                room: 255,
                ..
            })
        ));
        assert!(forwards(22_000, "10.0.0.0/8").is_err());
        assert!(forwards(0, "198.51.100.0/24").is_err());
    }
}

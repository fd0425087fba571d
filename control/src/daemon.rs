//! `ec2lab serve`: opens the data directory, registers the images,
//! reconciles the database with the VMMs that are really running, and serves
//! the EC2 API with SigV4 checked against the data directory's credentials.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::api::actions::AppState;
use crate::api::error::Ec2Error;
use crate::api::listener;
use crate::api::server::{ApiState, Authenticator, SignedRequest};
use crate::api::sigv4;
use crate::config::Credentials;
use crate::db::Db;
use crate::lifecycle::{HealthChecks, Lab};
use crate::supervisor::Supervisor;

/// Errors starting the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// The data directory or its credentials.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// The database.
    #[error("database {path}: {source}")]
    Db {
        /// The file.
        path: PathBuf,
        /// Why.
        source: crate::db::DbError,
    },
    /// The images.
    #[error("images in {dir}: {source}")]
    Images {
        /// The directory.
        dir: PathBuf,
        /// What is wrong.
        source: crate::images::CatalogError,
    },
    /// The loopback forwards do not fit the public pool.
    #[error("loopback forwards: {0}")]
    Forwards(crate::network::forwards::ForwardsError),
    /// The listening socket.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The VMM binary is missing or not executable: every launch would fail
    /// after RunInstances had answered.
    #[error("the VMM {0} is not an executable file (build it, or pass --vmm)")]
    NoVmm(PathBuf),
    /// The data directory's lock.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// Reconciling with the running VMMs.
    #[error("reconciling instances: {0}")]
    Reconcile(#[from] crate::lifecycle::LabError),
}

/// What `ec2lab serve` needs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The data directory (database, instances, credentials).
    pub data_dir: PathBuf,
    /// Where images are.
    pub images_dir: PathBuf,
    /// The VMM binary.
    pub vmm: PathBuf,
    /// Where to listen.
    pub listen: SocketAddr,
    /// How long a guest's agent has to check in over vsock before its
    /// instance status check reports `impaired`.
    pub checkin_timeout: Duration,
    /// How long a VMM waits, with its guest stuck in kernel code, before
    /// it reports a stall (None: the VMM's default, 5 minutes).
    pub stall_timeout: Option<Duration>,
    /// The dnsmasq binary serving each VPC's DHCP and DNS.
    pub dnsmasq: PathBuf,
    /// Where internet gateways lead, and the public pool.
    pub uplink: crate::network::uplink::Uplink,
    /// Where VPCs' DNS forwards names outside the VPC, in order (empty:
    /// nowhere, only the VPC's names resolve).
    pub dns_upstreams: Vec<SocketAddr>,
    /// Loopback forwards to public addresses start at this port (0: none).
    pub forward_base: u16,
    /// Instances whose kernel plugs virtio-mem memory boot with at most
    /// this much (MiB) and get the rest once up (None: all at boot).
    pub boot_memory_mib: Option<u64>,
}

/// SigV4 against the data directory's one set of credentials.
struct SigV4Auth {
    credentials: Credentials,
}

impl Authenticator for SigV4Auth {
    fn authenticate(&self, r: &SignedRequest<'_>) -> Result<(), Ec2Error> {
        let headers: Vec<(String, String)> = r
            .headers
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let request = sigv4::Request {
            method: r.method.as_str(),
            path: r.uri.path(),
            query: r.uri.query().unwrap_or(""),
            headers: &headers,
            body: r.body,
        };
        let lookup = |id: &str| {
            (id == self.credentials.access_key_id).then(|| sigv4::Credentials {
                access_key_id: self.credentials.access_key_id.clone(),
                secret_access_key: self.credentials.secret_access_key.clone(),
            })
        };
        sigv4::verify(
            &request,
            &lookup,
            SystemTime::now(),
            &self.credentials.region,
            r.service,
        )
        .map(|_| ())
        .map_err(|e| {
            Ec2Error::new(
                axum::http::StatusCode::from_u16(e.http_status())
                    .unwrap_or(axum::http::StatusCode::UNAUTHORIZED),
                e.code(),
                e.to_string(),
            )
        })
    }
}

/// Runs the daemon until SIGINT/SIGTERM. VMMs keep running after it exits:
/// instances outlive the control plane, and the next start adopts them.
pub async fn serve(options: ServeOptions) -> Result<(), DaemonError> {
    raise_descriptor_limit();
    let (credentials, _) = Credentials::load_or_create(&options.data_dir, "us-east-1")?;
    // One daemon per data directory, and the port before anything else: a
    // second daemon must fail before it touches the first one's instances
    // (check-in sockets, VMMs) while reconciling.
    let _lock = lock_data_dir(&options.data_dir)?;
    if !is_executable(&options.vmm) {
        return Err(DaemonError::NoVmm(options.vmm.clone()));
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .map_err(|source| DaemonError::Listen {
            addr: options.listen,
            source,
        })?;
    let db_path = options.data_dir.join("ec2lab.db");
    let db = Db::open(&db_path).map_err(|source| DaemonError::Db {
        path: db_path.clone(),
        source,
    })?;
    // Room for the database's writes when the disk fills; taken again
    // whenever the disk has space for it.
    let reserve = std::sync::Arc::new(crate::reserve::DiskReserve::new(&options.data_dir));
    reserve.replenish();
    db.keep_room(reserve.clone());
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            reserve.replenish();
        }
    });
    let instances_dir = options.data_dir.join("instances");
    let mut supervisor = Supervisor::new(options.vmm.clone(), instances_dir);
    // SAFETY: geteuid only reads the process's credentials.
    if unsafe { libc::geteuid() } == 0 {
        supervisor = supervisor.with_cgroups(crate::cgroup::Cgroups::detect());
    }
    let lab = Lab::new(
        db,
        supervisor,
        options.images_dir.clone(),
        tokio::runtime::Handle::current(),
        HealthChecks {
            checkin_timeout: options.checkin_timeout,
            stall_timeout: options.stall_timeout,
        },
    );
    lab.set_boot_memory(options.boot_memory_mib);
    match options.boot_memory_mib {
        Some(mib) => log::info!(
            "memory: instances boot with at most {mib} MiB and plug the rest once up (kernels with virtio-mem)"
        ),
        None => log::info!("memory: instances boot with all of their memory"),
    }
    let mut network =
        crate::network::Network::new(options.data_dir.join("network"), options.dnsmasq.clone())
            .with_uplink(options.uplink.clone());
    if options.dns_upstreams.is_empty() {
        log::info!("DNS: only names inside a VPC resolve (no upstream)");
    } else {
        log::info!(
            "DNS: names outside a VPC are forwarded to {:?}",
            options.dns_upstreams
        );
        network = network.with_forwarder(crate::network::dns_forward::Forwarder::new(
            options.dns_upstreams.clone(),
            tokio::runtime::Handle::current(),
        ));
    }
    if options.forward_base != 0 {
        network = network.with_port_forwards(
            crate::network::forwards::PortForwards::new(
                options.forward_base,
                options.uplink.pool,
                &options.uplink.namespace,
                options.data_dir.join("forwards"),
                tokio::runtime::Handle::current(),
            )
            .map_err(DaemonError::Forwards)?,
        );
    }
    lab.set_network(network);
    match lab.register_catalog() {
        Ok(n) => log::info!(
            "{n} images registered from {}",
            options.images_dir.display()
        ),
        Err(source) => {
            return Err(DaemonError::Images {
                dir: options.images_dir.clone(),
                source,
            })
        }
    }
    lab.reconcile()?;
    let collector = lab.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(60)).await;
            collector.collect();
        }
    });
    log::info!(
        "serving the EC2 API on http://{} (region {}, data in {})",
        options.listen,
        credentials.region,
        options.data_dir.display()
    );
    let app = AppState::new(credentials.region.clone(), lab.clone());
    let state = ApiState::new(app, SigV4Auth { credentials });
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending::<()>().await } } => {}
        }
        log::info!("stopping the API; instances keep running");
    };
    let left = listener::serve(listener, state, listener::Limits::default(), shutdown).await;
    if left > 0 {
        log::warn!("{left} API connection(s) closed unanswered at shutdown");
    }
    Ok(())
}

/// Why the data directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another daemon serves this data directory.
    #[error("{0} is in use by another ec2lab daemon (it holds ec2lab.lock there)")]
    InUse(PathBuf),
    /// The lock file could not be opened or locked.
    #[error("cannot lock {path}: {source}")]
    Io {
        /// The lock file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// Takes `<data_dir>/ec2lab.lock` for as long as the returned file is open
/// (an advisory `flock`, released by the kernel when the daemon dies, even
/// by `kill -9`).
pub fn lock_data_dir(data_dir: &std::path::Path) -> Result<std::fs::File, LockError> {
    let path = data_dir.join("ec2lab.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| LockError::Io {
            path: path.clone(),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LockError::InUse(data_dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(source)) => Err(LockError::Io { path, source }),
    }
}

/// Whether `path` is a regular file someone may execute.
fn is_executable(path: &std::path::Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Raises the soft limit on open descriptors to the hard limit: every
/// instance holds a few (its check-in socket, the VMM's pipes) and every
/// API client one, and the default soft limit of 1,024 ran out under load.
fn raise_descriptor_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes only into the rlimit we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return;
    }
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            ..limit
        };
        // SAFETY: setrlimit reads only the rlimit we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            log::warn!(
                "cannot raise the open-file limit from {}: {}",
                limit.rlim_cur,
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_daemon_cannot_take_the_data_directory_until_the_first_is_gone() {
        let dir = tempfile::tempdir().expect("tempdir");
        let first = lock_data_dir(dir.path()).expect("first");
        assert!(matches!(
            lock_data_dir(dir.path()),
            Err(LockError::InUse(_))
        ));
        drop(first);
        lock_data_dir(dir.path()).expect("free again");
    }

    #[test]
    fn only_an_executable_file_passes_for_the_vmm() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let vmm = dir.path().join("ec2lab-vmm");
        assert!(!is_executable(&vmm), "missing");
        std::fs::write(&vmm, b"#!/bin/sh\n").expect("write");
        assert!(!is_executable(&vmm), "not executable");
        std::fs::set_permissions(&vmm, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        assert!(is_executable(&vmm));
        assert!(!is_executable(dir.path()), "a directory");
    }
}

//! The control API: HTTP/JSON over a Unix socket, one per VMM.
//!
//! ```text
//! GET  /vm                                  state, config, uptime, per-vCPU exit counts
//! PUT  /vm/state  {"state":"Paused"|"Resumed"}
//! PUT  /actions   {"action":"SendCtrlAltDel"|"Shutdown"}
//! PUT  /metadata  the instance metadata document (replaces what IMDS serves)
//! PUT  /snapshot/create                     save the paused VM (no body; see crate::snapshot)
//! GET  /hotplug/memory                      the hotplug memory: region, block, plugged, requested
//! PATCH /hotplug/memory {"requested_size_mib":N}  ask the guest for N MiB of it
//! ```
//! The server thread only parses and renders; every request is carried out
//! by the VMM's main loop ([`handle`], calling methods of [`Vmm`]), so API
//! calls and guest exits are serialised. Paths and bodies are the contract
//! crate's ([`ec2lab_vmm_api::api`]), the same types the control plane sends.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Sender};

pub use ec2lab_vmm_api::api::{
    ActionBody, ActionType, ApiFault, ApiRequest, HotplugMemoryBody, StateBody, VmStateRequest,
    ACTIONS_PATH, HOTPLUG_MEMORY_PATH, METADATA_PATH, SNAPSHOT_CREATE_PATH, VM_PATH, VM_STATE_PATH,
};
use ec2lab_vmm_api::metadata::InstanceMetadata;
use serde_json::json;

use crate::devices::bus::lock;
use crate::seccomp::ThreadFilter;
use crate::snapshot::SnapshotError;
use crate::vmm::Vmm;
use crate::VmmEvent;

/// Errors starting the API server.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Another process is listening on the socket path.
    #[error("API socket {0} is in use by another process")]
    InUse(PathBuf),
    /// The socket could not be created.
    #[error("cannot listen on API socket {path}: {reason}")]
    Bind {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The VMM's answer.
#[derive(Debug)]
pub enum ApiResponse {
    /// 200 with a JSON body.
    Json(serde_json::Value),
    /// 204.
    NoContent,
    /// An error status with a message.
    Error(u16, String),
}

/// Maps method, path and body to a request, or an HTTP error.
pub fn parse(method: &str, path: &str, body: &[u8]) -> Result<ApiRequest, (u16, String)> {
    let bad = |e: serde_json::Error| (400, format!("invalid request body: {e}"));
    match (method, path) {
        ("GET", VM_PATH) => Ok(ApiRequest::Describe),
        ("PUT" | "PATCH", VM_STATE_PATH) => {
            let b: StateBody = serde_json::from_slice(body).map_err(bad)?;
            Ok(ApiRequest::SetState(b.state))
        }
        ("PUT", ACTIONS_PATH) => {
            let b: ActionBody = serde_json::from_slice(body).map_err(bad)?;
            Ok(ApiRequest::Action(b.action))
        }
        ("PUT", METADATA_PATH) => {
            let doc: InstanceMetadata = serde_json::from_slice(body).map_err(bad)?;
            crate::config::check_metadata(&doc).map_err(|e| (400, e.to_string()))?;
            Ok(ApiRequest::SetMetadata(Box::new(doc)))
        }
        ("PUT", SNAPSHOT_CREATE_PATH) => {
            // Firecracker's body names files; ours may name nothing (the
            // directory is the VM's own), so only an empty object is taken.
            if !body.iter().all(u8::is_ascii_whitespace) {
                let b: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_slice(body).map_err(bad)?;
                if let Some(field) = b.keys().next() {
                    return Err((
                        400,
                        format!("unknown field {field:?}: a snapshot is written to the VM's snapshot_dir"),
                    ));
                }
            }
            Ok(ApiRequest::CreateSnapshot)
        }
        ("GET", HOTPLUG_MEMORY_PATH) => Ok(ApiRequest::HotplugMemory),
        ("PATCH", HOTPLUG_MEMORY_PATH) => {
            let b: HotplugMemoryBody = serde_json::from_slice(body).map_err(bad)?;
            Ok(ApiRequest::SetHotplugMemory(b))
        }
        (
            _,
            VM_PATH | VM_STATE_PATH | ACTIONS_PATH | METADATA_PATH | SNAPSHOT_CREATE_PATH
            | HOTPLUG_MEMORY_PATH,
        ) => Err((405, format!("method {method} not allowed on {path}"))),
        _ => Err((404, format!("no such resource: {path}"))),
    }
}

/// The answer of the hotplug memory routes on a VM that has none.
const NO_HOTPLUG_MEMORY: &str = "this VM has no hotplug memory (hotplug_memory in its config)";

/// Carries out `req` on the running VM (on the VMM's main loop); returns
/// the answer and whether the VM must stop now.
pub fn handle(vmm: &mut Vmm, req: ApiRequest) -> (ApiResponse, bool) {
    match req {
        ApiRequest::Describe => (ApiResponse::Json(describe(vmm)), false),
        ApiRequest::SetState(VmStateRequest::Paused) => match vmm.pause_vm() {
            Ok(()) => (ApiResponse::NoContent, false),
            Err(e) => (ApiResponse::Error(500, e.to_string()), false),
        },
        ApiRequest::SetState(VmStateRequest::Resumed) => {
            vmm.resume_vm();
            (ApiResponse::NoContent, false)
        }
        ApiRequest::Action(ActionType::SendCtrlAltDel) => {
            vmm.send_ctrl_alt_del();
            (ApiResponse::NoContent, false)
        }
        ApiRequest::Action(ActionType::Shutdown) => (ApiResponse::NoContent, true),
        ApiRequest::CreateSnapshot => match vmm.create_snapshot() {
            Ok(report) => (
                ApiResponse::Json(serde_json::to_value(report).unwrap_or_default()),
                false,
            ),
            Err(e @ (SnapshotError::NotPaused | SnapshotError::NoDirectory)) => {
                (ApiResponse::Error(409, e.to_string()), false)
            }
            Err(e) => (ApiResponse::Error(500, e.to_string()), false),
        },
        ApiRequest::HotplugMemory => match vmm.hotplug_memory() {
            Some(status) => (
                ApiResponse::Json(serde_json::to_value(status).unwrap_or_default()),
                false,
            ),
            None => (ApiResponse::Error(404, NO_HOTPLUG_MEMORY.into()), false),
        },
        ApiRequest::SetHotplugMemory(body) => {
            match vmm.request_hotplug_memory(body.requested_size_mib) {
                Ok(Some(status)) => (
                    ApiResponse::Json(serde_json::to_value(status).unwrap_or_default()),
                    false,
                ),
                Ok(None) => (ApiResponse::Error(404, NO_HOTPLUG_MEMORY.into()), false),
                Err(e) => (ApiResponse::Error(400, e.to_string()), false),
            }
        }
        ApiRequest::SetMetadata(doc) => {
            if vmm.update_metadata(&doc) {
                (ApiResponse::NoContent, false)
            } else {
                let why = "this VM serves no instance metadata (it has no network card)";
                (ApiResponse::Error(409, why.into()), false)
            }
        }
    }
}

/// The body of `GET /vm`.
fn describe(vmm: &Vmm) -> serde_json::Value {
    let vcpus: Vec<_> = vmm
        .vcpus()
        .iter()
        .map(|h| json!({ "id": h.id(), "exits": h.control().stats.snapshot() }))
        .collect();
    let devices: Vec<_> = vmm
        .virtio_devices()
        .iter()
        .map(|slot| {
            let t = lock(&slot.transport);
            json!({
                "type": t.device().name(),
                "mmio_base": slot.info.base,
                "gsi": slot.info.gsi,
                "active": t.is_active(),
                "counters": t.device().counters().snapshot(),
            })
        })
        .collect();
    json!({
        "state": vmm.state(),
        "devices": devices,
        "config": vmm.config(),
        "cmdline": vmm.cmdline(),
        "uptime_ms": vmm.uptime().as_millis() as u64,
        "vcpus": vcpus,
        "stall": vmm.stall(),
    })
}

/// Largest request body we read: a metadata document with 16 KiB of user
/// data as a JSON array is under 80 KiB; every other body is a few dozen
/// bytes.
const MAX_BODY: u64 = 128 * 1024;

/// The running server; removes its socket when dropped.
///
/// The socket is removed through a descriptor of its directory opened at
/// start, because the main thread's seccomp filter allows `unlinkat` only
/// there: a confined VMM can remove its own socket and nothing else.
pub struct ApiServer {
    dir: std::fs::File,
    name: std::ffi::CString,
}

impl ApiServer {
    /// The descriptor the socket is removed through.
    pub fn dir_fd(&self) -> i32 {
        self.dir.as_raw_fd()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        // SAFETY: `dir` is an open directory and `name` a NUL-terminated
        // file name; unlinkat reads both and keeps neither.
        unsafe { libc::unlinkat(self.dir.as_raw_fd(), self.name.as_ptr(), 0) };
    }
}

/// Binds `path` and starts the server thread, which installs `filter`
/// before it accepts anything (the HTTP server's own threads are created
/// from it afterwards and inherit the filter).
pub fn start(
    path: &Path,
    events: Sender<VmmEvent>,
    filter: ThreadFilter,
) -> Result<ApiServer, ApiError> {
    let bind_error = |reason: String| ApiError::Bind {
        path: path.to_path_buf(),
        reason,
    };
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(ApiError::InUse(path.to_path_buf()));
        }
        // A stale socket from a VMM that did not clean up.
        let _ = std::fs::remove_file(path);
    }
    let name = path
        .file_name()
        .and_then(|n| std::ffi::CString::new(n.as_bytes()).ok())
        .ok_or_else(|| bind_error("not a file name".to_string()))?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(|e| bind_error(format!("cannot open its directory: {e}")))?;
    let listener = UnixListener::bind(path).map_err(|e| bind_error(e.to_string()))?;
    let server = ApiServer { dir, name };
    std::thread::Builder::new()
        .name("api".to_string())
        .spawn(move || {
            filter.apply_or_exit();
            match tiny_http::Server::from_listener(listener, None) {
                Ok(server) => serve(server, events),
                Err(e) => log::error!("api: cannot serve: {e}"),
            }
        })
        .map_err(|e| bind_error(e.to_string()))?;
    Ok(server)
}

fn serve(server: tiny_http::Server, events: Sender<VmmEvent>) {
    for mut request in server.incoming_requests() {
        let mut body = Vec::new();
        let read = request.as_reader().take(MAX_BODY).read_to_end(&mut body);
        let response = match read {
            Err(e) => ApiResponse::Error(400, format!("cannot read request body: {e}")),
            Ok(_) => match parse(request.method().as_str(), request.url(), &body) {
                Err((status, msg)) => ApiResponse::Error(status, msg),
                Ok(req) => {
                    let (tx, rx) = mpsc::channel();
                    if events.send(VmmEvent::Api(req, tx)).is_err() {
                        ApiResponse::Error(503, "the VMM is shutting down".to_string())
                    } else {
                        rx.recv().unwrap_or_else(|_| {
                            ApiResponse::Error(503, "the VMM is shutting down".to_string())
                        })
                    }
                }
            },
        };
        let json = tiny_http::Header::from_bytes("Content-Type", "application/json").ok();
        let reply = match response {
            ApiResponse::Json(v) => {
                tiny_http::Response::from_string(v.to_string()).with_status_code(200)
            }
            ApiResponse::NoContent => tiny_http::Response::from_string("").with_status_code(204),
            ApiResponse::Error(status, fault_message) => tiny_http::Response::from_string(
                serde_json::to_string(&ApiFault { fault_message }).unwrap_or_default(),
            )
            .with_status_code(status),
        };
        let reply = match json {
            Some(h) => reply.with_header(h),
            None => reply,
        };
        if let Err(e) = request.respond(reply) {
            log::debug!("api: cannot send response: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_parse() {
        assert_eq!(parse("GET", "/vm", b""), Ok(ApiRequest::Describe));
        assert_eq!(
            parse("PUT", "/vm/state", br#"{"state":"Paused"}"#),
            Ok(ApiRequest::SetState(VmStateRequest::Paused))
        );
        assert_eq!(
            parse("PUT", "/actions", br#"{"action":"SendCtrlAltDel"}"#),
            Ok(ApiRequest::Action(ActionType::SendCtrlAltDel))
        );
    }

    #[test]
    fn bad_requests_get_http_errors() {
        assert_eq!(parse("GET", "/nope", b"").map_err(|e| e.0), Err(404));
        assert_eq!(parse("DELETE", "/vm", b"").map_err(|e| e.0), Err(405));
        assert_eq!(parse("PUT", "/vm/state", b"{").map_err(|e| e.0), Err(400));
        assert_eq!(
            parse("PUT", "/vm/state", br#"{"state":"Sleeping"}"#).map_err(|e| e.0),
            Err(400)
        );
        assert_eq!(
            parse("PUT", "/actions", br#"{"action":"Shutdown","x":1}"#).map_err(|e| e.0),
            Err(400)
        );
        assert_eq!(
            parse("PUT", "/hotplug/memory", b"{}").map_err(|e| e.0),
            Err(405)
        );
        assert_eq!(
            parse("PATCH", "/hotplug/memory", br#"{"requested_size_mib":-1}"#).map_err(|e| e.0),
            Err(400)
        );
        assert_eq!(
            parse("PATCH", "/hotplug/memory", br#"{"size":256}"#).map_err(|e| e.0),
            Err(400)
        );
    }

    #[test]
    fn every_request_a_client_sends_parses_back_to_itself() {
        for request in [
            ApiRequest::Describe,
            ApiRequest::SetState(VmStateRequest::Paused),
            ApiRequest::SetState(VmStateRequest::Resumed),
            ApiRequest::Action(ActionType::SendCtrlAltDel),
            ApiRequest::Action(ActionType::Shutdown),
            ApiRequest::SetMetadata(Box::new(InstanceMetadata {
                instance_id: "i-1".into(),
                user_data: Some(vec![0, 255, 7]),
                ..InstanceMetadata::default()
            })),
            ApiRequest::HotplugMemory,
            ApiRequest::SetHotplugMemory(HotplugMemoryBody {
                requested_size_mib: 768,
            }),
        ] {
            let body = request
                .body()
                .map(|b| serde_json::to_vec(&b).expect("serialises"))
                .unwrap_or_default();
            assert_eq!(
                parse(request.method(), request.path(), &body),
                Ok(request.clone())
            );
        }
    }
}

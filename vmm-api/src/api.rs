//! The control API's requests and the parts of its answers a client reads.
//!
//! ```text
//! GET  /vm                                  state, config, uptime, per-vCPU exit counts, stall
//! PUT  /vm/state  {"state":"Paused"|"Resumed"}
//! PUT  /actions   {"action":"SendCtrlAltDel"|"Shutdown"}
//! PUT  /metadata  InstanceMetadata          what 169.254.169.254 serves from now on
//! PUT  /snapshot/create                     save the paused VM into its snapshot directory
//! GET  /hotplug/memory                      the hotplug memory: region, block, plugged, requested
//! PATCH /hotplug/memory {"requested_size_mib":N}  ask the guest to plug (or unplug) up to N MiB
//! ```
//! Errors come back with a 4xx or 5xx status and [`ApiFault`] as the body.
//! Request bodies refuse unknown fields, so a client's typo is a 400 rather
//! than a request the VMM quietly reads differently. [`VmInfo`] reads only
//! what clients act on and ignores the rest, so the VMM may report more.

use serde::{Deserialize, Serialize};

use crate::metadata::InstanceMetadata;

/// `GET` here describes the VM.
pub const VM_PATH: &str = "/vm";
/// `PUT` (or `PATCH`) a [`StateBody`] here to pause or resume.
pub const VM_STATE_PATH: &str = "/vm/state";
/// `PUT` an [`ActionBody`] here.
pub const ACTIONS_PATH: &str = "/actions";
/// `PUT` an [`InstanceMetadata`] here to replace what the metadata service
/// serves (a new public address, groups, tags, options).
pub const METADATA_PATH: &str = "/metadata";
/// `PUT` here (no body) while the VM is paused to save it, memory and
/// all, into the config's `snapshot_dir`; a VMM started with
/// `--restore-from` that directory goes on from there.
pub const SNAPSHOT_CREATE_PATH: &str = "/snapshot/create";

/// `GET` here for the hotplug memory's [`HotplugMemoryStatus`]; `PATCH` a
/// [`HotplugMemoryBody`] to ask the guest for another size.
pub const HOTPLUG_MEMORY_PATH: &str = "/hotplug/memory";

/// How much hotplug memory the guest should have.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HotplugMemoryBody {
    /// MiB, a multiple of the block size, at most the region's size.
    pub requested_size_mib: u64,
}

/// The hotplug memory as `GET /hotplug/memory` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugMemoryStatus {
    /// The region's size in MiB: the most the guest can plug.
    pub total_size_mib: u64,
    /// The unit the guest plugs, in MiB.
    pub block_size_mib: u64,
    /// What the guest has plugged, in MiB.
    pub plugged_size_mib: u64,
    /// What the guest was asked to plug, in MiB.
    pub requested_size_mib: u64,
}

/// Requested VM state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmStateRequest {
    /// Pause every vCPU.
    Paused,
    /// Resume every vCPU.
    Resumed,
}

/// Instance actions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActionType {
    /// Press Ctrl-Alt-Del on the guest's keyboard (graceful shutdown request).
    SendCtrlAltDel,
    /// Stop the VM now.
    Shutdown,
}

/// The body of `PUT /vm/state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateBody {
    /// The state wanted.
    pub state: VmStateRequest,
}

/// The body of `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionBody {
    /// The action.
    pub action: ActionType,
}

/// One control API request: what the VMM's server parses and a client
/// sends, with its method, path and body in one place.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ApiRequest {
    /// `GET /vm`.
    Describe,
    /// `PUT /vm/state`.
    SetState(VmStateRequest),
    /// `PUT /actions`.
    Action(ActionType),
    /// `PUT /metadata`.
    SetMetadata(Box<InstanceMetadata>),
    /// `PUT /snapshot/create`.
    CreateSnapshot,
    /// `GET /hotplug/memory`.
    HotplugMemory,
    /// `PATCH /hotplug/memory`.
    SetHotplugMemory(HotplugMemoryBody),
}

/// A request body, serialised as the object its route expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum RequestBody<'a> {
    /// For `PUT /vm/state`.
    State(StateBody),
    /// For `PUT /actions`.
    Action(ActionBody),
    /// For `PUT /metadata`.
    Metadata(&'a InstanceMetadata),
    /// For `PATCH /hotplug/memory`.
    HotplugMemory(HotplugMemoryBody),
}

impl ApiRequest {
    /// The HTTP method a client sends.
    pub const fn method(&self) -> &'static str {
        match self {
            Self::Describe | Self::HotplugMemory => "GET",
            Self::SetState(_) | Self::Action(_) | Self::SetMetadata(_) | Self::CreateSnapshot => {
                "PUT"
            }
            Self::SetHotplugMemory(_) => "PATCH",
        }
    }

    /// The path.
    pub const fn path(&self) -> &'static str {
        match self {
            Self::Describe => VM_PATH,
            Self::SetState(_) => VM_STATE_PATH,
            Self::Action(_) => ACTIONS_PATH,
            Self::SetMetadata(_) => METADATA_PATH,
            Self::CreateSnapshot => SNAPSHOT_CREATE_PATH,
            Self::HotplugMemory | Self::SetHotplugMemory(_) => HOTPLUG_MEMORY_PATH,
        }
    }

    /// The JSON body, if the request has one.
    pub fn body(&self) -> Option<RequestBody<'_>> {
        match self {
            Self::Describe | Self::CreateSnapshot | Self::HotplugMemory => None,
            Self::SetHotplugMemory(body) => Some(RequestBody::HotplugMemory(*body)),
            Self::SetState(state) => Some(RequestBody::State(StateBody { state: *state })),
            Self::Action(action) => Some(RequestBody::Action(ActionBody { action: *action })),
            Self::SetMetadata(doc) => Some(RequestBody::Metadata(doc)),
        }
    }
}

/// The body of an error answer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiFault {
    /// What went wrong, for a person.
    pub fault_message: String,
}

/// Whether the vCPUs run, as `GET /vm` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmRunState {
    /// The guest runs.
    Running,
    /// Paused through `PUT /vm/state`.
    Paused,
}

/// The part of `GET /vm` a client acts on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmInfo {
    /// Running or paused.
    pub state: VmRunState,
    /// The stall watchdog's report; `null` while the guest makes progress.
    #[serde(default)]
    pub stall: Option<Stall>,
}

/// A stall the VMM's watchdog reports: no vCPU has made an exit for
/// `quiet_secs`, and these vCPUs were found stuck in guest kernel code or
/// halted with interrupts off. What to do about it is the client's call.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stall {
    /// Seconds since the last exit of any vCPU.
    pub quiet_secs: u64,
    /// The stuck vCPUs and where they were.
    pub vcpus: Vec<StuckVcpu>,
}

/// One stuck vCPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StuckVcpu {
    /// vCPU index.
    pub id: u8,
    /// Where it was.
    #[serde(flatten)]
    pub sample: VcpuSample,
}

/// Where a vCPU was when the watchdog looked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuSample {
    /// Guest instruction pointer.
    pub rip: u64,
    /// Whether the vCPU was in ring 0.
    pub kernel_mode: bool,
    /// Whether the vCPU was halted (HLT) waiting for an interrupt.
    pub halted: bool,
    /// RFLAGS.IF.
    pub interrupts_enabled: bool,
}

impl std::fmt::Display for Stall {
    /// The VMM's log line for a new stall.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "guest stalled: no exit and no serial output for {} s;",
            self.quiet_secs
        )?;
        for vcpu in &self.vcpus {
            write!(f, " {vcpu}")?;
        }
        Ok(())
    }
}

impl std::fmt::Display for StuckVcpu {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let place = if self.sample.halted {
            "halted with interrupts off"
        } else {
            "in guest kernel code"
        };
        write!(f, "vcpu{} {place} at RIP {:#x}", self.id, self.sample.rip)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wire(request: ApiRequest) -> (&'static str, &'static str, String) {
        let body = request
            .body()
            .map(|b| serde_json::to_string(&b).expect("serialises"))
            .unwrap_or_default();
        (request.method(), request.path(), body)
    }

    #[test]
    fn requests_go_out_as_the_vmm_reads_them() {
        assert_eq!(wire(ApiRequest::Describe), ("GET", "/vm", String::new()));
        assert_eq!(
            wire(ApiRequest::SetState(VmStateRequest::Paused)),
            ("PUT", "/vm/state", r#"{"state":"Paused"}"#.to_string())
        );
        assert_eq!(
            wire(ApiRequest::SetState(VmStateRequest::Resumed)),
            ("PUT", "/vm/state", r#"{"state":"Resumed"}"#.to_string())
        );
        assert_eq!(
            wire(ApiRequest::Action(ActionType::SendCtrlAltDel)),
            (
                "PUT",
                "/actions",
                r#"{"action":"SendCtrlAltDel"}"#.to_string()
            )
        );
        assert_eq!(
            wire(ApiRequest::Action(ActionType::Shutdown)),
            ("PUT", "/actions", r#"{"action":"Shutdown"}"#.to_string())
        );
    }

    #[test]
    fn request_bodies_parse_back_and_refuse_unknown_fields() {
        let body: ActionBody = serde_json::from_str(r#"{"action":"Shutdown"}"#).expect("parses");
        assert_eq!(body.action, ActionType::Shutdown);
        let body: StateBody = serde_json::from_str(r#"{"state":"Paused"}"#).expect("parses");
        assert_eq!(body.state, VmStateRequest::Paused);
        assert!(serde_json::from_str::<ActionBody>(r#"{"action":"Shutdown","x":1}"#).is_err());
        assert!(serde_json::from_str::<StateBody>(r#"{"state":"Sleeping"}"#).is_err());
    }

    #[test]
    fn a_fault_is_one_message_field() {
        let fault = ApiFault {
            fault_message: "no such resource: /x".to_string(),
        };
        assert_eq!(
            serde_json::to_string(&fault).expect("serialises"),
            r#"{"fault_message":"no such resource: /x"}"#
        );
    }

    #[test]
    fn a_stall_serialises_with_each_vcpus_sample_flattened() {
        let stall = Stall {
            quiet_secs: 300,
            vcpus: vec![StuckVcpu {
                id: 0,
                sample: VcpuSample {
                    rip: 18_446_744_071_578_968_516,
                    kernel_mode: true,
                    halted: false,
                    interrupts_enabled: false,
                },
            }],
        };
        assert_eq!(
            stall.to_string(),
            "guest stalled: no exit and no serial output for 300 s; vcpu0 in guest kernel code at RIP 0xffffffff8101e1c4"
        );
        let json = serde_json::to_string(&stall).expect("serialises");
        assert_eq!(
            json,
            r#"{"quiet_secs":300,"vcpus":[{"id":0,"rip":18446744071578968516,"kernel_mode":true,"halted":false,"interrupts_enabled":false}]}"#
        );
        assert_eq!(serde_json::from_str::<Stall>(&json).expect("parses"), stall);
    }

    #[test]
    fn vm_info_reads_state_and_stall_and_ignores_the_rest() {
        let info: VmInfo = serde_json::from_str(
            r#"{"state":"Paused","stall":null,"uptime_ms":1042,"config":{"kernel":"/k"},"vcpus":[]}"#,
        )
        .expect("parses");
        assert_eq!(
            info,
            VmInfo {
                state: VmRunState::Paused,
                stall: None
            }
        );
        let info: VmInfo = serde_json::from_str(
            r#"{"state":"Running","stall":{"quiet_secs":42,"vcpus":[{"id":1,"rip":16,"kernel_mode":false,"halted":true,"interrupts_enabled":false}]}}"#,
        )
        .expect("parses");
        let stall = info.stall.expect("a stall");
        assert_eq!((stall.quiet_secs, stall.vcpus[0].id), (42, 1));
        assert!(stall.vcpus[0].sample.halted);
    }
}

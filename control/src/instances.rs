//! Instance operations as the EC2 API asks for them: launch, start, stop,
//! reboot and terminate, each a method of [`Lab`].
//!
//! The API handlers only parse and render (moto's responses/models split);
//! the rules live here and each is checked once: the image, kernel, key and
//! zone of a launch, host capacity and free addresses, every id existing
//! before anything changes, termination protection. The VMM side of each
//! operation (boot, stop, restart) is `lifecycle`'s; the state machine
//! (`model::state`) decides which transitions are allowed.

use std::net::Ipv4Addr;
use std::sync::Arc;

use crate::db::{DbError, InsertOutcome, InstanceQuery, InterfaceChange};
use crate::groups::GroupError;
use crate::lifecycle::{Lab, LabError};
use crate::model::ids::{self, IdKind};
use crate::model::state::{self, Event, InstanceState, ShutdownBehavior};
use crate::model::vpc::{InterfaceRequest, IpamError};
use crate::model::{
    CpuCredits, Image, ImageKind, ImageState, Instance, MetadataOptions, Placement, Reservation,
    RootVolume, DEFAULT_AVAILABILITY_ZONE, DEFAULT_OWNER_ID,
};

/// Why an instance operation was refused or failed. Each variant is one
/// rule; `api::error` gives each its EC2 code.
#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    /// The lifecycle (a refused transition, a failed VMM operation).
    #[error(transparent)]
    Lab(#[from] LabError),
    /// The repository (unknown ids, a full subnet, a broken database).
    #[error(transparent)]
    Db(#[from] DbError),
    /// A security group or interface change.
    #[error(transparent)]
    Groups(#[from] GroupError),
    /// The instance has no primary network interface to change.
    #[error("The instance '{0}' has no network interface")]
    NoNetworkInterface(String),
    /// DisableApiTermination is set.
    #[error("The instance '{0}' may not be terminated. Modify its 'disableApiTermination' instance attribute and try again.")]
    TerminationProtected(String),
    /// The launch names no available machine image.
    #[error("The image id '[{0}]' does not exist")]
    ImageNotFound(String),
    /// StopInstances Hibernate on an instance launched without
    /// HibernationOptions.
    #[error("The instance is not enabled for hibernation: {0}")]
    HibernationNotConfigured(String),
    /// DisableApiStop is set.
    #[error("The instance '{0}' may not be stopped. Modify its 'disableApiStop' instance attribute and try again.")]
    StopProtected(String),
    /// A zone that is not one of the lab's region.
    #[error("Invalid availability zone: [{0}]")]
    InvalidAvailabilityZone(String),
    /// The subnet asked for is not in the zone asked for.
    #[error("Subnet '{subnet_id}' is in availability zone {subnet_zone}, not {zone}")]
    SubnetInAnotherZone {
        /// The subnet.
        subnet_id: String,
        /// Its zone.
        subnet_zone: String,
        /// The zone `Placement` asked for.
        zone: String,
    },
    /// One private address asked for more than one instance.
    #[error("A private IP address can only be given to one instance: MaxCount must be 1")]
    AddressForMany,
    /// Credits asked of (or about) an instance whose type does not burst.
    #[error("The instance '{id}' is of type {instance_type}, which does not support CPU credits (only burstable performance types do)")]
    CreditsNotSupported {
        /// The instance.
        id: String,
        /// Its type.
        instance_type: String,
    },
    /// `CreditSpecification` on a launch of a type that does not burst.
    #[error("The parameter CreditSpecification is not supported for instance type {0}")]
    CreditsForSteadyType(String),
    /// A ClientToken already used by a launch that asked for something
    /// else.
    #[error("Arguments on this idempotent request are inconsistent with arguments used in previous request(s) with client token '{0}'.")]
    IdempotentParameterMismatch(String),
    /// Not even MinCount instances of the type fit on the host.
    #[error("insufficient {0} capacity")]
    InsufficientCapacity(String),
    /// ModifyInstanceAttribute to a type the lab does not have.
    #[error("Invalid value '{0}' for InstanceType.")]
    UnknownInstanceType(String),
}

/// One change ModifyInstanceAttribute asks for, parsed and shaped by the
/// handler; the rules (which types exist, the instance existing) are
/// [`Lab::modify_attributes`]'.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttributeChange {
    /// `instanceType`.
    InstanceType(String),
    /// `userData`, decoded.
    UserData(Vec<u8>),
    /// `disableApiTermination`.
    DisableApiTermination(bool),
    /// `disableApiStop`.
    DisableApiStop(bool),
    /// `instanceInitiatedShutdownBehavior`.
    ShutdownBehavior(ShutdownBehavior),
    /// `groupSet`: the primary interface's security groups (ids).
    Groups(Vec<String>),
    /// `sourceDestCheck` of the primary interface.
    SourceDestCheck(bool),
}

/// The newest part of an instance's serial console, as GetConsoleOutput
/// returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsoleOutput {
    /// At most the bytes asked for, the newest.
    pub text: Vec<u8>,
    /// When the console was last written (None: never).
    pub written_at: Option<std::time::SystemTime>,
}

/// RunInstances' networking, checked for shape but not yet against the
/// repository: where the primary interface goes and what it gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LaunchNetwork {
    /// `SubnetId` (else the zone's default subnet).
    pub subnet_id: Option<String>,
    /// `PrivateIpAddress` (else the lowest free one).
    pub private_ip: Option<Ipv4Addr>,
    /// `SecurityGroupId.N`.
    pub group_ids: Vec<String>,
    /// `SecurityGroup.N`.
    pub group_names: Vec<String>,
    /// Whether the interface goes with the instance.
    pub delete_on_termination: bool,
    /// The interface's description.
    pub description: String,
    /// `AssociatePublicIpAddress` (None: the subnet decides).
    pub associate_public_ip: Option<bool>,
}

/// What RunInstances asks for, parsed and checked for shape.
#[derive(Debug, Clone)]
pub struct LaunchRequest {
    pub image_id: String,
    /// `KernelId`, overriding the image's.
    pub kernel_id: Option<String>,
    pub instance_type: String,
    /// At least this many, or none.
    pub min: u32,
    /// At most this many.
    pub max: u32,
    pub key_name: Option<String>,
    /// Decoded, at most 16 KiB.
    pub user_data: Option<Vec<u8>>,
    pub tags: Vec<(String, String)>,
    /// Tags for the root volume (`TagSpecification` of type `volume`).
    pub volume_tags: Vec<(String, String)>,
    /// Tags for the primary interface (type `network-interface`).
    pub interface_tags: Vec<(String, String)>,
    pub shutdown_behavior: ShutdownBehavior,
    pub disable_api_termination: bool,
    pub disable_api_stop: bool,
    /// `CreditSpecification.CpuCredits` (else the type's default).
    pub cpu_credits: Option<CpuCredits>,
    pub metadata: MetadataOptions,
    pub hibernation: bool,
    /// The root volume's size (else the image's).
    pub root_size_gib: Option<u32>,
    pub delete_on_termination: bool,
    /// Makes the launch idempotent.
    pub client_token: Option<String>,
    /// `Placement.AvailabilityZone`.
    pub zone: Option<String>,
    pub network: LaunchNetwork,
}

impl LaunchRequest {
    /// What the launch asks for, token aside, as a hex SHA-256 of its
    /// fields: equal for a faithful retry, different for any other ask.
    /// It hashes the Debug rendering, so a retry across an ec2lab upgrade
    /// that changes these fields reads as a mismatch (EC2 forgets tokens
    /// after some hours anyway).
    pub fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let asked = LaunchRequest {
            client_token: None,
            ..self.clone()
        };
        hex::encode(Sha256::digest(format!("{asked:?}").as_bytes()))
    }
}

/// The reservation a token made, if `digest` asks for the same launch.
fn same_launch(existing: Reservation, digest: &str) -> Result<Reservation, InstanceError> {
    match &existing.launch_digest {
        Some(earlier) if earlier != digest => Err(InstanceError::IdempotentParameterMismatch(
            existing.client_token.clone().unwrap_or_default(),
        )),
        _ => Ok(existing),
    }
}

/// One instance's move, as Start/Stop/TerminateInstances report it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChange {
    pub instance_id: String,
    pub previous: InstanceState,
    pub current: InstanceState,
}

impl StateChange {
    fn of(before: &Instance, after: &Instance) -> Self {
        Self {
            instance_id: after.id.clone(),
            previous: before.state,
            current: after.state,
        }
    }
}

impl Lab {
    /// RunInstances in `region`: records the reservation (pending) and
    /// boots its instances in the background. A repeated client token
    /// returns the reservation it made the first time, if it asks for the
    /// same launch.
    pub fn launch(
        self: &Arc<Self>,
        region: &str,
        launch: &LaunchRequest,
    ) -> Result<Reservation, InstanceError> {
        let digest = launch.digest();
        if let Some(token) = &launch.client_token {
            if let Some(existing) = self.db.find_reservation_by_client_token(token)? {
                return same_launch(existing, &digest);
            }
        }
        if launch.cpu_credits.is_some() && CpuCredits::default_for(&launch.instance_type).is_none()
        {
            return Err(InstanceError::CreditsForSteadyType(
                launch.instance_type.clone(),
            ));
        }
        let image = self.db.get_image(&launch.image_id)?;
        if image.kind != ImageKind::Machine || image.state != ImageState::Available {
            return Err(InstanceError::ImageNotFound(launch.image_id.clone()));
        }
        let kernel_id = launch.kernel_id.clone().or(image.kernel_id.clone());
        if let Some(k) = &kernel_id {
            self.db.get_image(k)?;
        }
        if let Some(key) = &launch.key_name {
            self.db.get_key_pair_by_name(key)?;
        }
        if let Some(zone) = &launch.zone {
            if !zone.starts_with(region) || zone.len() != region.len() + 1 {
                return Err(InstanceError::InvalidAvailabilityZone(zone.clone()));
            }
        }
        let (mut interface, zone) =
            self.launch_interface(&launch.network, launch.zone.as_deref())?;
        interface.tags = launch.interface_tags.clone();
        if launch.network.private_ip.is_some() && launch.max > 1 {
            return Err(InstanceError::AddressForMany);
        }
        let count = self.launch_count(launch, &interface.subnet_id)?;
        let mut reservation = self.new_reservation(launch, count, kernel_id, &zone, image);
        reservation.launch_digest = Some(digest.clone());
        match self
            .db
            .insert_reservation(&mut reservation, Some(&interface))?
        {
            InsertOutcome::Existing(existing) => same_launch(existing, &digest),
            InsertOutcome::Created => {
                for i in &reservation.instances {
                    log::info!("{}: launching {} ({})", i.id, i.image_id, i.instance_type);
                    // Public addresses show in DescribeInstances while
                    // the instance is pending, as in EC2 (not in this
                    // answer). A failure here fails the boot, which
                    // assigns again before it builds the network.
                    if let Err(e) = self.db.assign_public_ips(&i.id, self.public_pool()) {
                        log::warn!("{}: no public address yet: {e}", i.id);
                    }
                    self.spawn_boot(i.id.clone());
                }
                Ok(reservation)
            }
        }
    }

    /// How many instances a launch makes: as many as fit on the host and
    /// have addresses in the subnet, up to MaxCount, but at least MinCount
    /// (EC2's rule). The launch's transaction checks the addresses again,
    /// so a race with another launch fails cleanly instead of
    /// over-allocating.
    fn launch_count(&self, launch: &LaunchRequest, subnet_id: &str) -> Result<u32, InstanceError> {
        let fit = self.how_many_fit(&launch.instance_type)?;
        let count = u32::try_from(fit).unwrap_or(u32::MAX).min(launch.max);
        if count < launch.min {
            return Err(InstanceError::InsufficientCapacity(
                launch.instance_type.clone(),
            ));
        }
        let free = self.db.get_subnet(subnet_id)?.available_ip_address_count;
        let count = u32::try_from(free).unwrap_or(u32::MAX).min(count);
        if count < launch.min {
            let full = IpamError::SubnetFull {
                subnet_id: subnet_id.to_string(),
            };
            return Err(DbError::Ipam(full).into());
        }
        Ok(count)
    }

    /// The subnet and zone of a launch, and the interface to create: the
    /// subnet asked for (whose zone must agree with `Placement`), else the
    /// default subnet of the zone asked for, else the lab's default zone's.
    fn launch_interface(
        &self,
        net: &LaunchNetwork,
        zone: Option<&str>,
    ) -> Result<(InterfaceRequest, String), InstanceError> {
        let subnet = match &net.subnet_id {
            Some(id) => {
                let subnet = self.db.get_subnet(id)?;
                if let Some(zone) = zone {
                    if zone != subnet.availability_zone {
                        return Err(InstanceError::SubnetInAnotherZone {
                            subnet_id: id.clone(),
                            subnet_zone: subnet.availability_zone,
                            zone: zone.to_string(),
                        });
                    }
                }
                subnet
            }
            None => {
                let zone = zone.unwrap_or(DEFAULT_AVAILABILITY_ZONE);
                self.db
                    .default_subnet_for_zone(zone)?
                    // Every zone of the lab has a default subnet, so a zone
                    // without one is not a zone of the lab.
                    .ok_or_else(|| InstanceError::InvalidAvailabilityZone(zone.to_string()))?
            }
        };
        let zone = subnet.availability_zone.clone();
        Ok((
            InterfaceRequest {
                subnet_id: subnet.id,
                private_ip: net.private_ip,
                group_ids: net.group_ids.clone(),
                group_names: net.group_names.clone(),
                delete_on_termination: net.delete_on_termination,
                description: net.description.clone(),
                associate_public_ip: net.associate_public_ip,
                tags: Vec::new(),
            },
            zone,
        ))
    }

    /// The reservation of `count` pending instances a launch records.
    fn new_reservation(
        &self,
        launch: &LaunchRequest,
        count: u32,
        kernel_id: Option<String>,
        zone: &str,
        image: Image,
    ) -> Reservation {
        let now = Lab::now();
        let reservation_id = ids::generate(IdKind::Reservation);
        let launched = state::launch();
        let root_gib = launch.root_size_gib.or(image.root_size_gib).unwrap_or(1);
        let instances = (0..count)
            .map(|index| {
                let id = ids::generate(IdKind::Instance);
                Instance {
                    root_volume: RootVolume {
                        volume_id: ids::generate(IdKind::Volume),
                        size_gib: root_gib,
                        delete_on_termination: launch.delete_on_termination,
                        path: self.supervisor.files(&id).root_volume(),
                        tags: launch.volume_tags.iter().cloned().collect(),
                    },
                    id,
                    reservation_id: reservation_id.clone(),
                    image_id: launch.image_id.clone(),
                    kernel_id: kernel_id.clone(),
                    instance_type: launch.instance_type.clone(),
                    key_name: launch.key_name.clone(),
                    state: launched.to,
                    state_reason: match &launched.state_reason {
                        state::Update::Set(r) => Some(r.clone()),
                        _ => None,
                    },
                    state_transition_reason: String::new(),
                    launch_time: now,
                    user_data: launch.user_data.clone(),
                    tags: launch.tags.iter().cloned().collect(),
                    shutdown_behavior: launch.shutdown_behavior,
                    disable_api_termination: launch.disable_api_termination,
                    disable_api_stop: launch.disable_api_stop,
                    cpu_credits: launch.cpu_credits,
                    metadata_options: launch.metadata,
                    hibernation_configured: launch.hibernation,
                    client_token: launch.client_token.clone(),
                    ami_launch_index: index,
                    placement: Placement {
                        availability_zone: zone.to_string(),
                    },
                    vmm: None,
                    console_output_path: None,
                    terminated_at: None,
                    network_interfaces: Vec::new(),
                }
            })
            .collect();
        Reservation {
            id: reservation_id,
            owner_id: DEFAULT_OWNER_ID.to_string(),
            client_token: launch.client_token.clone(),
            launch_digest: None,
            instances,
        }
    }

    /// Refuses the whole request if one id is unknown, before anything
    /// changes (EC2 does the same).
    fn require_instances(&self, ids: &[String]) -> Result<(), InstanceError> {
        self.db.list_instances(&InstanceQuery {
            instance_ids: ids.to_vec(),
            ..Default::default()
        })?;
        Ok(())
    }

    /// StartInstances: stopped instances boot again if the host has room.
    pub fn start(self: &Arc<Self>, ids: &[String]) -> Result<Vec<StateChange>, InstanceError> {
        self.require_instances(ids)?;
        let mut changes = Vec::new();
        for id in ids {
            let instance = self.db.get_instance(id)?;
            if instance.state == InstanceState::Stopped
                && self.how_many_fit(&instance.instance_type)? == 0
            {
                return Err(InstanceError::InsufficientCapacity(instance.instance_type));
            }
            let (before, after) = self.apply(id, &Event::StartRequested)?;
            if before.state == InstanceState::Stopped {
                self.spawn_boot(id.clone());
            }
            changes.push(StateChange::of(&before, &after));
        }
        Ok(changes)
    }

    /// StopInstances: the guest gets the stop timeout to power off, or
    /// none with `force` (which also applies to an instance already
    /// stopping). Refused for all if one that would stop is protected, as
    /// termination protection refuses a termination. With `hibernate`,
    /// every instance must have been launched with HibernationOptions, and
    /// its memory is saved with its root volume so that StartInstances
    /// resumes it.
    pub fn stop(
        self: &Arc<Self>,
        ids: &[String],
        force: bool,
        hibernate: bool,
    ) -> Result<Vec<StateChange>, InstanceError> {
        self.require_instances(ids)?;
        for id in ids {
            let i = self.db.get_instance(id)?;
            if i.disable_api_stop
                && matches!(i.state, InstanceState::Pending | InstanceState::Running)
            {
                return Err(InstanceError::StopProtected(id.clone()));
            }
            if hibernate && !i.hibernation_configured {
                return Err(InstanceError::HibernationNotConfigured(id.clone()));
            }
        }
        let mut changes = Vec::new();
        for id in ids {
            let event = if hibernate {
                Event::HibernateRequested
            } else {
                Event::StopRequested { force }
            };
            let (before, after) = self.apply(id, &event)?;
            if before.state != after.state || (force && !hibernate) {
                if hibernate {
                    self.spawn_hibernate(id);
                } else {
                    self.spawn_stop(id, force);
                }
            }
            changes.push(StateChange::of(&before, &after));
        }
        Ok(changes)
    }

    /// RebootInstances: the instance stays running while its VMM restarts.
    pub fn reboot(self: &Arc<Self>, ids: &[String]) -> Result<(), InstanceError> {
        self.require_instances(ids)?;
        for id in ids {
            self.apply(id, &Event::RebootRequested)?;
            self.spawn_reboot(id)?;
        }
        Ok(())
    }

    /// TerminateInstances: refused for all if one is protected, so that a
    /// protected instance in the list leaves the others untouched too.
    pub fn terminate(self: &Arc<Self>, ids: &[String]) -> Result<Vec<StateChange>, InstanceError> {
        self.require_instances(ids)?;
        for id in ids {
            let i = self.db.get_instance(id)?;
            if i.disable_api_termination && i.state != InstanceState::Terminated {
                return Err(InstanceError::TerminationProtected(id.clone()));
            }
        }
        let mut changes = Vec::new();
        for id in ids {
            let (before, after) = self.apply(id, &Event::TerminateRequested)?;
            if before.state != after.state {
                self.spawn_terminate(&after);
            }
            changes.push(StateChange::of(&before, &after));
        }
        Ok(changes)
    }
}

impl Lab {
    /// DescribeInstanceCreditSpecifications: the credit option of each
    /// instance named (all must exist and burst), or of every burstable
    /// instance not yet terminated when none is named.
    pub fn credit_specifications(
        &self,
        ids: &[String],
    ) -> Result<Vec<(String, CpuCredits)>, InstanceError> {
        let instances = self.db.list_instances(&InstanceQuery {
            instance_ids: ids.to_vec(),
            ..Default::default()
        })?;
        let mut out = Vec::new();
        for i in instances.items {
            match i.effective_cpu_credits() {
                None if !ids.is_empty() => {
                    return Err(InstanceError::CreditsNotSupported {
                        id: i.id,
                        instance_type: i.instance_type,
                    })
                }
                // Unnamed, only the instances EC2 would still bill.
                Some(_) if ids.is_empty() && i.state == InstanceState::Terminated => {}
                Some(credits) => out.push((i.id, credits)),
                None => {}
            }
        }
        Ok(out)
    }

    /// ModifyInstanceCreditSpecification: each change succeeds or fails on
    /// its own, as EC2 reports them (successful and unsuccessful sets).
    pub fn modify_credit_specifications(
        &self,
        changes: &[(String, CpuCredits)],
    ) -> Vec<(String, Result<(), InstanceError>)> {
        changes
            .iter()
            .map(|(id, credits)| {
                let outcome = self
                    .db
                    .get_instance(id)
                    .map_err(InstanceError::from)
                    .and_then(|i| {
                        if i.effective_cpu_credits().is_none() {
                            return Err(InstanceError::CreditsNotSupported {
                                id: i.id,
                                instance_type: i.instance_type,
                            });
                        }
                        Ok(self.db.set_cpu_credits(id, *credits)?)
                    });
                (id.clone(), outcome)
            })
            .collect()
    }
}

impl Lab {
    /// DescribeVolumes: the instances whose root volumes exist, for the
    /// volumes named (all must exist) or all of them. ec2lab has no volume
    /// of its own yet: every volume is an instance's root, and it is gone
    /// once its instance terminates with DeleteOnTermination.
    pub fn root_volumes(&self, volume_ids: &[String]) -> Result<Vec<Instance>, InstanceError> {
        let exists = |i: &Instance| {
            i.state != InstanceState::Terminated || !i.root_volume.delete_on_termination
        };
        let found: Vec<Instance> = self
            .db
            .all_instances()?
            .into_iter()
            .filter(|i| exists(i))
            .filter(|i| volume_ids.is_empty() || volume_ids.contains(&i.root_volume.volume_id))
            .collect();
        let missing: Vec<String> = volume_ids
            .iter()
            .filter(|v| !found.iter().any(|i| &i.root_volume.volume_id == *v))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(DbError::NotFound {
                kind: IdKind::Volume,
                ids: missing,
            }
            .into());
        }
        Ok(found)
    }
}

impl Lab {
    /// ModifyInstanceAttribute: applies `changes` to `id` in order, after
    /// checking the instance exists and every change is valid.
    pub fn modify_attributes(
        &self,
        id: &str,
        changes: &[AttributeChange],
    ) -> Result<(), InstanceError> {
        self.db.get_instance(id)?;
        for change in changes {
            if let AttributeChange::InstanceType(t) = change {
                if crate::model::instance_types::lookup(t).is_none() {
                    return Err(InstanceError::UnknownInstanceType(t.clone()));
                }
            }
        }
        for change in changes {
            match change {
                AttributeChange::InstanceType(t) => self.db.set_instance_type(id, t)?,
                AttributeChange::UserData(raw) => self.db.set_user_data(id, Some(raw))?,
                AttributeChange::DisableApiTermination(on) => {
                    self.db.set_disable_api_termination(id, *on)?
                }
                AttributeChange::DisableApiStop(on) => self.db.set_disable_api_stop(id, *on)?,
                AttributeChange::ShutdownBehavior(b) => self.db.set_shutdown_behavior(id, *b)?,
                AttributeChange::Groups(groups) => {
                    self.modify_primary_interface(id, &InterfaceChange::Groups(groups.clone()))?
                }
                AttributeChange::SourceDestCheck(on) => {
                    self.modify_primary_interface(id, &InterfaceChange::SourceDestCheck(*on))?
                }
            }
        }
        Ok(())
    }

    /// Applies `change` to `id`'s primary interface (the instance forms of
    /// ModifyNetworkInterfaceAttribute, as EC2 offers them).
    fn modify_primary_interface(
        &self,
        id: &str,
        change: &InterfaceChange,
    ) -> Result<(), InstanceError> {
        let instance = self.db.get_instance(id)?;
        let primary = instance
            .network_interfaces
            .iter()
            .find(|e| e.attachment.as_ref().is_some_and(|a| a.device_index == 0))
            .ok_or_else(|| InstanceError::NoNetworkInterface(id.to_string()))?;
        self.modify_network_interface(&primary.id, change)?;
        Ok(())
    }

    /// GetConsoleOutput: the newest `max` bytes of `id`'s serial console
    /// (the VMM keeps the log capped and cut to its tail).
    pub fn console_output(&self, id: &str, max: u64) -> Result<ConsoleOutput, InstanceError> {
        use std::io::{Read, Seek, SeekFrom};
        let instance = self.db.get_instance(id)?;
        let path = instance
            .console_output_path
            .clone()
            .unwrap_or_else(|| self.supervisor.files(id).serial_log());
        let Ok(mut file) = std::fs::File::open(&path) else {
            return Ok(ConsoleOutput {
                text: Vec::new(),
                written_at: None,
            });
        };
        let meta = file.metadata().ok();
        let len = meta.as_ref().map_or(0, |m| m.len());
        let _ = file.seek(SeekFrom::Start(len.saturating_sub(max)));
        let mut text = Vec::new();
        let _ = file.take(max).read_to_end(&mut text);
        Ok(ConsoleOutput {
            text,
            written_at: meta.and_then(|m| m.modified().ok()),
        })
    }
}

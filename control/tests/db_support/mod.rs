//! Builders shared by the db_* integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

use ec2lab_control::db::Db;
use ec2lab_control::model::ids::{self, IdKind};
use ec2lab_control::model::state::ShutdownBehavior;
use ec2lab_control::model::{
    Instance, InstanceState, MetadataOptions, Placement, Reservation, RootVolume, Tags,
    DEFAULT_OWNER_ID,
};
use time::OffsetDateTime;

/// A database in a fresh temporary directory; keep the directory alive as
/// long as the database.
pub fn temp_db() -> (tempfile::TempDir, Db) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = Db::open(&dir.path().join("ec2lab.db")).expect("open db");
    (dir, db)
}

/// A whole-second time, so values survive the millisecond storage as is.
pub fn at(seconds: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(1_795_734_000 + seconds).expect("valid time")
}

pub fn instance(reservation_id: &str, index: u32, launched: OffsetDateTime) -> Instance {
    Instance {
        id: ids::generate(IdKind::Instance),
        reservation_id: reservation_id.to_string(),
        image_id: "ami-0123456789abcdef0".to_string(),
        kernel_id: Some("aki-0123456789abcdef0".to_string()),
        instance_type: "lab.micro".to_string(),
        key_name: Some("laptop".to_string()),
        state: InstanceState::Pending,
        state_reason: Some(ec2lab_control::model::StateReason::pending()),
        state_transition_reason: String::new(),
        launch_time: launched,
        user_data: Some(b"#!/bin/sh\necho \x00\xff hi\n".to_vec()),
        tags: Tags::new(),
        shutdown_behavior: ShutdownBehavior::Stop,
        disable_api_termination: false,
        cpu_credits: None,
        disable_api_stop: false,
        metadata_options: MetadataOptions::default(),
        hibernation_configured: false,
        root_volume: RootVolume {
            volume_id: ids::generate(IdKind::Volume),
            size_gib: 2,
            delete_on_termination: true,
            path: PathBuf::from("/var/lib/ec2lab/volumes/root.ext4"),
            tags: Tags::new(),
        },
        client_token: None,
        ami_launch_index: index,
        placement: Placement::default(),
        vmm: None,
        console_output_path: None,
        terminated_at: None,
        network_interfaces: Vec::new(),
    }
}

/// A reservation of `count` pending instances launched at `launched`.
pub fn reservation(count: u32, token: Option<&str>, launched: OffsetDateTime) -> Reservation {
    let id = ids::generate(IdKind::Reservation);
    let instances = (0..count)
        .map(|i| {
            let mut inst = instance(&id, i, launched);
            inst.client_token = token.map(str::to_string);
            inst
        })
        .collect();
    Reservation {
        id,
        owner_id: DEFAULT_OWNER_ID.to_string(),
        client_token: token.map(str::to_string),
        launch_digest: None,
        instances,
    }
}

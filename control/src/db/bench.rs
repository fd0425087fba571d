//! Bench-only store helpers: records in bulk for `ec2lab bench-seed`
//! (which `scripts/bench api` runs before it starts the daemon) and for
//! scale tests that need many instances without launching any.
//!
//! They live in the library rather than under `benches/` because the
//! release binary's `bench-seed` subcommand calls them and they write
//! through the store's own transaction and row mapping, which stay private
//! to `db`. Keeping them apart from `instances` keeps the production paths
//! free of fake data.

use std::path::PathBuf;

use rusqlite::params;
use time::OffsetDateTime;

use super::instances::insert_instance;
use super::{to_ms, truncate_ms, Db, DbError};
use crate::model::ids::{self, IdKind};
use crate::model::{
    Instance, InstanceState, MetadataOptions, Placement, RootVolume, ShutdownBehavior, Tags,
};

impl Db {
    /// **For benchmarks and scale tests only**: stores `n` running
    /// instances (no VMM, no real root volume) in reservations of ten, with
    /// tags `Name=bench-NNNNN` and `parity=even|odd`, types alternating
    /// `lab.nano` / `lab.micro`. Returns their ids in launch order.
    pub fn bulk_insert_for_bench(
        &self,
        n: usize,
        now: OffsetDateTime,
    ) -> Result<Vec<String>, DbError> {
        let now = truncate_ms(now);
        self.write(|tx| {
            let mut ids = Vec::with_capacity(n);
            for (batch_no, start) in (0..n).step_by(10).enumerate() {
                let reservation_id = ids::generate(IdKind::Reservation);
                let created = now + time::Duration::milliseconds(batch_no as i64);
                tx.execute(
                    "INSERT INTO reservations (id, owner_id, client_token, created_ms)
                     VALUES (?1, ?2, NULL, ?3)",
                    params![
                        reservation_id,
                        crate::model::DEFAULT_OWNER_ID,
                        to_ms(created)
                    ],
                )?;
                for (index, i) in (start..n.min(start + 10)).enumerate() {
                    let id = ids::generate(IdKind::Instance);
                    let instance = Instance {
                        id: id.clone(),
                        reservation_id: reservation_id.clone(),
                        image_id: "ami-00000000000000000".to_string(),
                        kernel_id: None,
                        instance_type: if i % 2 == 0 { "lab.nano" } else { "lab.micro" }
                            .to_string(),
                        key_name: None,
                        state: InstanceState::Running,
                        state_reason: None,
                        state_transition_reason: String::new(),
                        launch_time: created,
                        user_data: None,
                        tags: Tags::from([
                            ("Name".to_string(), format!("bench-{i:05}")),
                            (
                                "parity".to_string(),
                                if i % 2 == 0 { "even" } else { "odd" }.to_string(),
                            ),
                        ]),
                        shutdown_behavior: ShutdownBehavior::Stop,
                        disable_api_termination: false,
                        cpu_credits: None,
                        disable_api_stop: false,
                        metadata_options: MetadataOptions::default(),
                        hibernation_configured: false,
                        root_volume: RootVolume {
                            volume_id: ids::generate(IdKind::Volume),
                            size_gib: 1,
                            delete_on_termination: true,
                            path: PathBuf::from("/nonexistent/bench"),
                            tags: Tags::new(),
                        },
                        client_token: None,
                        ami_launch_index: index as u32,
                        placement: Placement::default(),
                        vmm: None,
                        console_output_path: None,
                        terminated_at: None,
                        network_interfaces: Vec::new(),
                    };
                    insert_instance(tx, &instance)?;
                    ids.push(id);
                }
            }
            Ok(ids)
        })
    }
}

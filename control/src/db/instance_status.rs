//! Instance status checks: one record per instance for its current VMM,
//! the deadline its guest agent must check in by (`model::status`).

use rusqlite::{params, OptionalExtension};
use time::OffsetDateTime;

use super::instances::instance_state;
use super::{from_ms, to_ms, Db, DbError};
use crate::model::status::CheckinRecord;

impl Db {
    /// Starts a new status-check record for an instance whose VMM is
    /// being started: any earlier check-in was another boot's.
    pub fn reset_checkin(&self, id: &str, record: &CheckinRecord) -> Result<(), DbError> {
        self.write(|tx| {
            instance_state(tx, id)?;
            tx.execute(
                "INSERT INTO instance_checkins
                    (instance_id, vmm_started_ms, deadline_ms, checked_in_ms, boot_id)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (instance_id) DO UPDATE SET vmm_started_ms = ?2,
                    deadline_ms = ?3, checked_in_ms = ?4, boot_id = ?5",
                params![
                    id,
                    to_ms(record.vmm_started),
                    to_ms(record.deadline),
                    record.checked_in.map(to_ms),
                    record.boot_id
                ],
            )?;
            Ok(())
        })
    }

    /// Records the agent's check-in against the instance's current record;
    /// false when it has none (no VMM was started since it was created).
    pub fn record_checkin(
        &self,
        id: &str,
        at: OffsetDateTime,
        boot_id: &str,
    ) -> Result<bool, DbError> {
        self.write(|tx| {
            let changed = tx.execute(
                "UPDATE instance_checkins SET checked_in_ms = ?2, boot_id = ?3
                 WHERE instance_id = ?1",
                params![id, to_ms(at), boot_id],
            )?;
            Ok(changed == 1)
        })
    }

    /// The instance's status-check record, if a VMM was ever started for it.
    pub fn checkin_record(&self, id: &str) -> Result<Option<CheckinRecord>, DbError> {
        let row = self
            .lock()
            .query_row(
                "SELECT vmm_started_ms, deadline_ms, checked_in_ms, boot_id
                 FROM instance_checkins WHERE instance_id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, i64>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()?;
        row.map(|(started, deadline, checked_in, boot_id)| {
            Ok(CheckinRecord {
                vmm_started: from_ms(started)?,
                deadline: from_ms(deadline)?,
                checked_in: checked_in.map(from_ms).transpose()?,
                boot_id,
            })
        })
        .transpose()
    }
}

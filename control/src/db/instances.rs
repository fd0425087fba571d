//! Instances and their reservations: RunInstances' one-transaction insert
//! (with ClientToken idempotency), DescribeInstances in launch order with
//! resumable pages, compare-and-set state transitions, the attributes
//! ModifyInstanceAttribute changes, and garbage collection of terminated
//! instances.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction};
use time::OffsetDateTime;

use super::tags::{insert_tags, tags_of};
use super::{
    from_ms, missing_ids, network, not_found, parse_column, path_text, query_first, to_ms,
    truncate_ms, unique_violation, Db, DbError,
};
use crate::model::filter::{self, Filter, FilterError, Page, PageRequest};
use crate::model::ids::IdKind;
use crate::model::state::{Transition, Update};
use crate::model::vpc::InterfaceRequest;
use crate::model::{
    CpuCredits, HttpTokens, Instance, InstanceState, MetadataOptions, Placement, Reservation,
    RootVolume, ShutdownBehavior, StateReason, Toggle, VmmHandle,
};

/// How long terminated instances stay visible before [`Db::collect_terminated`]
/// forgets them (EC2 keeps them about an hour).
pub const TERMINATED_RETENTION: time::Duration = time::Duration::hours(1);

/// What [`Db::insert_reservation_with_instances`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The reservation is new: launch its instances.
    Created,
    /// A reservation with the same ClientToken exists: RunInstances must
    /// answer with it and launch nothing (EC2 idempotency).
    Existing(Reservation),
}

/// A DescribeInstances query: explicit ids (all must exist), filters, page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InstanceQuery {
    pub instance_ids: Vec<String>,
    pub filters: Vec<Filter>,
    pub page: PageRequest,
}

impl Db {
    /// Stores a RunInstances result in one transaction. With a ClientToken
    /// already used, stores nothing and returns the earlier reservation.
    pub fn insert_reservation_with_instances(
        &self,
        reservation: &Reservation,
    ) -> Result<InsertOutcome, DbError> {
        self.insert_reservation(&mut reservation.clone(), None)
    }

    /// Stores a RunInstances result in one transaction, giving each
    /// instance a primary network interface as `interface` asks (address
    /// allocation included, so a failure stores nothing) and filling in
    /// `reservation`'s instances with it. With a ClientToken already used,
    /// stores nothing and returns the earlier reservation.
    pub fn insert_reservation(
        &self,
        reservation: &mut Reservation,
        interface: Option<&InterfaceRequest>,
    ) -> Result<InsertOutcome, DbError> {
        self.write(|tx| {
            if let Some(token) = &reservation.client_token {
                if let Some(existing) = reservation_by_token(tx, token)? {
                    return Ok(InsertOutcome::Existing(existing));
                }
            }
            let created = reservation
                .instances
                .iter()
                .map(|i| i.launch_time)
                .min()
                .ok_or(DbError::Conflict {
                    kind: IdKind::Reservation,
                    id: reservation.id.clone(),
                    reason: "a reservation needs at least one instance",
                })?;
            tx.execute(
                "INSERT INTO reservations (id, owner_id, client_token, created_ms, launch_digest)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    reservation.id,
                    reservation.owner_id,
                    reservation.client_token,
                    to_ms(created),
                    reservation.launch_digest,
                ],
            )
            .map_err(|e| unique_violation(e, IdKind::Reservation, &reservation.id))?;
            for instance in &mut reservation.instances {
                insert_instance(tx, instance)?;
                if let Some(request) = interface {
                    let mut eni = network::create_primary_interface(
                        tx,
                        &instance.id,
                        request,
                        instance.launch_time,
                    )?;
                    let tags = request.tags.iter().cloned().collect();
                    insert_tags(tx, &eni.id, &tags)?;
                    eni.tags = tags;
                    instance.network_interfaces = vec![eni];
                }
            }
            Ok(InsertOutcome::Created)
        })
    }

    /// The reservation RunInstances created with `token`, if any.
    pub fn find_reservation_by_client_token(
        &self,
        token: &str,
    ) -> Result<Option<Reservation>, DbError> {
        reservation_by_token(&self.lock(), token)
    }

    /// One instance, whatever its state.
    pub fn get_instance(&self, id: &str) -> Result<Instance, DbError> {
        get_instance(&self.lock(), id)
    }

    /// DescribeInstances: instances in launch order (reservation creation,
    /// then launch index), filtered, one page. Explicit ids that do not
    /// exist make the whole call fail, as in EC2.
    pub fn list_instances(&self, query: &InstanceQuery) -> Result<Page<Instance>, DbError> {
        let matcher = filter::Matcher::new::<Instance>(&query.filters)?;
        let size = query.page.page_size(filter::DESCRIBE_LIMITS)?;
        let after = match query.page.after()? {
            Some(key) => Some(decode_instance_key(&key).ok_or_else(|| {
                FilterError::InvalidToken(query.page.next_token.clone().unwrap_or_default())
            })?),
            None => None,
        };
        let wanted: HashSet<&str> = query.instance_ids.iter().map(String::as_str).collect();
        // Rows are read under the lock; the filters, whose cost the request
        // chooses, run after it is released so other requests go on.
        let rows = {
            let conn = self.lock();
            if !wanted.is_empty() {
                let missing = missing_ids(&conn, "instances", &query.instance_ids)?;
                if !missing.is_empty() {
                    return Err(DbError::NotFound {
                        kind: IdKind::Instance,
                        ids: missing,
                    });
                }
            }
            let (after_ms, after_rid, after_idx) = after.unwrap_or((i64::MIN, String::new(), -1));
            let mut stmt = conn.prepare_cached(&format!(
                "{INSTANCE_SELECT}
                 WHERE (r.created_ms, i.reservation_id, i.ami_launch_index) > (?1, ?2, ?3)
                 ORDER BY r.created_ms, i.reservation_id, i.ami_launch_index"
            ))?;
            let mut rows = stmt.query(params![after_ms, after_rid, after_idx])?;
            let mut loaded: Vec<(Instance, String)> = Vec::new();
            while let Some(row) = rows.next()? {
                let id: String = row.get("id")?;
                if !wanted.is_empty() && !wanted.contains(id.as_str()) {
                    continue;
                }
                loaded.push((instance_from_row(&conn, row)?, instance_sort_key(row)?));
                // Without filters, one more than a page tells whether a
                // next page exists.
                if query.filters.is_empty() && size.is_some_and(|size| loaded.len() > size) {
                    break;
                }
            }
            loaded
        };
        let mut items: Vec<(Instance, String)> = Vec::new();
        for (instance, key) in rows {
            if !matcher.matches(&instance)? {
                continue;
            }
            items.push((instance, key));
            if size.is_some_and(|size| items.len() > size) {
                break;
            }
        }
        let next_token = match size {
            Some(size) if items.len() > size => {
                items.truncate(size);
                items.last().map(|(_, key)| filter::encode_token(key))
            }
            _ => None,
        };
        Ok(Page {
            items: items.into_iter().map(|(i, _)| i).collect(),
            next_token,
        })
    }

    /// Every instance, in launch order: for reconciliation at start-up and
    /// the capacity check.
    pub fn all_instances(&self) -> Result<Vec<Instance>, DbError> {
        Ok(self.list_instances(&InstanceQuery::default())?.items)
    }

    /// Applies a state machine transition with compare-and-set on
    /// `transition.from`: if the instance moved since it was read, nothing
    /// changes and the result is `StateConflict`. Entering `stopped` or
    /// `terminated` forgets the VMM (its process is gone); entering
    /// `terminated` records the time for garbage collection. A transition
    /// that deletes the record (Collected) removes the instance and its tags
    /// and returns it as it was.
    pub fn update_instance_state(
        &self,
        id: &str,
        transition: &Transition,
        now: OffsetDateTime,
    ) -> Result<Instance, DbError> {
        self.write(|tx| {
            let mut instance = get_instance(tx, id)?;
            if instance.state != transition.from {
                return Err(DbError::StateConflict {
                    id: id.to_string(),
                    expected: transition.from,
                    actual: instance.state,
                });
            }
            if transition.delete_record {
                delete_instance(tx, id)?;
                return Ok(instance);
            }
            instance.state = transition.to;
            match &transition.state_reason {
                Update::Keep => {}
                Update::Clear => instance.state_reason = None,
                Update::Set(r) => instance.state_reason = Some(r.clone()),
            }
            match &transition.state_transition_reason {
                Update::Keep => {}
                Update::Clear => instance.state_transition_reason.clear(),
                Update::Set(r) => instance.state_transition_reason = r.clone(),
            }
            if transition.resets_launch_time {
                instance.launch_time = truncate_ms(now);
            }
            if matches!(
                transition.to,
                InstanceState::Stopped | InstanceState::Terminated
            ) {
                instance.vmm = None;
            }
            if transition.to == InstanceState::Terminated && instance.terminated_at.is_none() {
                instance.terminated_at = Some(truncate_ms(now));
            }
            if transition.to == InstanceState::Terminated {
                network::release_interfaces(tx, id)?;
                instance.network_interfaces = network::interfaces_of_instance(tx, id)?;
            }
            let reason = instance.state_reason.clone();
            let changed = tx.execute(
                "UPDATE instances SET
                    state = ?1, state_reason_code = ?2, state_reason_message = ?3,
                    state_transition_reason = ?4, launch_time_ms = ?5,
                    vmm_pid = ?6, vmm_api_sock = ?7, vmm_serial_log = ?8,
                    terminated_at_ms = ?9
                 WHERE id = ?10 AND state = ?11",
                params![
                    instance.state.name(),
                    reason.as_ref().map(|r| &r.code),
                    reason.as_ref().map(|r| &r.message),
                    instance.state_transition_reason,
                    to_ms(instance.launch_time),
                    instance.vmm.as_ref().map(|v| v.pid),
                    instance
                        .vmm
                        .as_ref()
                        .map(|v| path_text(&v.api_sock))
                        .transpose()?,
                    instance
                        .vmm
                        .as_ref()
                        .map(|v| path_text(&v.serial_log))
                        .transpose()?,
                    instance.terminated_at.map(to_ms),
                    id,
                    transition.from.name(),
                ],
            )?;
            debug_assert_eq!(changed, 1, "the state was checked in this transaction");
            Ok(instance)
        })
    }

    /// Records (or, with `None`, forgets) the VMM process of an instance.
    pub fn set_vmm(&self, id: &str, vmm: Option<&VmmHandle>) -> Result<(), DbError> {
        let (pid, sock, log) = match vmm {
            Some(v) => (
                Some(v.pid),
                Some(path_text(&v.api_sock)?),
                Some(path_text(&v.serial_log)?),
            ),
            None => (None, None, None),
        };
        self.update_instance_column(
            id,
            "UPDATE instances SET vmm_pid = ?2, vmm_api_sock = ?3, vmm_serial_log = ?4
             WHERE id = ?1",
            params![id, pid, sock, log],
        )
    }

    /// Where GetConsoleOutput reads this instance's console from.
    pub fn set_console_output_path(&self, id: &str, path: Option<&Path>) -> Result<(), DbError> {
        let path = path.map(path_text).transpose()?;
        self.update_instance_column(
            id,
            "UPDATE instances SET console_output_path = ?2 WHERE id = ?1",
            params![id, path],
        )
    }

    /// ModifyInstanceAttribute InstanceType: only while stopped, as in EC2.
    /// The caller checks that the type exists.
    pub fn set_instance_type(&self, id: &str, instance_type: &str) -> Result<(), DbError> {
        self.update_while_stopped(
            id,
            "UPDATE instances SET instance_type = ?2 WHERE id = ?1",
            params![id, instance_type],
        )
    }

    /// ModifyInstanceAttribute UserData: only while stopped, as in EC2.
    pub fn set_user_data(&self, id: &str, user_data: Option<&[u8]>) -> Result<(), DbError> {
        self.update_while_stopped(
            id,
            "UPDATE instances SET user_data = ?2 WHERE id = ?1",
            params![id, user_data],
        )
    }

    /// ModifyInstanceAttribute DisableApiTermination.
    pub fn set_disable_api_termination(&self, id: &str, disable: bool) -> Result<(), DbError> {
        self.update_instance_column(
            id,
            "UPDATE instances SET disable_api_termination = ?2 WHERE id = ?1",
            params![id, disable],
        )
    }

    /// Replaces `stateTransitionReason` without a state change (a resume
    /// from hibernation that fell back to a boot says so here).
    pub fn set_state_transition_reason(&self, id: &str, reason: &str) -> Result<(), DbError> {
        self.update_instance_column(
            id,
            "UPDATE instances SET state_transition_reason = ?2 WHERE id = ?1",
            params![id, reason],
        )
    }

    /// ModifyInstanceAttribute DisableApiStop.
    pub fn set_disable_api_stop(&self, id: &str, disable: bool) -> Result<(), DbError> {
        self.update_instance_column(
            id,
            "UPDATE instances SET disable_api_stop = ?2 WHERE id = ?1",
            params![id, disable],
        )
    }

    /// ModifyInstanceAttribute InstanceInitiatedShutdownBehavior.
    pub fn set_shutdown_behavior(
        &self,
        id: &str,
        behavior: ShutdownBehavior,
    ) -> Result<(), DbError> {
        self.update_instance_column(
            id,
            "UPDATE instances SET shutdown_behavior = ?2 WHERE id = ?1",
            params![id, behavior.name()],
        )
    }

    /// ModifyInstanceCreditSpecification. The caller checks that the
    /// instance's type bursts.
    pub fn set_cpu_credits(&self, id: &str, credits: CpuCredits) -> Result<(), DbError> {
        self.update_instance_column(
            id,
            "UPDATE instances SET cpu_credits = ?2 WHERE id = ?1",
            params![id, credits.name()],
        )
    }

    /// ModifyInstanceMetadataOptions.
    pub fn set_metadata_options(&self, id: &str, options: &MetadataOptions) -> Result<(), DbError> {
        self.update_instance_column(
            id,
            "UPDATE instances SET http_tokens = ?2, http_endpoint = ?3,
                http_put_response_hop_limit = ?4, instance_metadata_tags = ?5
             WHERE id = ?1",
            params![
                id,
                options.http_tokens.name(),
                options.http_endpoint.name(),
                options.http_put_response_hop_limit,
                options.instance_metadata_tags.name()
            ],
        )
    }

    fn update_instance_column(
        &self,
        id: &str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), DbError> {
        self.write(|tx| {
            if tx.execute(sql, params)? == 0 {
                return Err(not_found(IdKind::Instance, id));
            }
            Ok(())
        })
    }

    fn update_while_stopped(
        &self,
        id: &str,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<(), DbError> {
        self.write(|tx| {
            let state = instance_state(tx, id)?;
            if state != InstanceState::Stopped {
                return Err(DbError::IncorrectState {
                    id: id.to_string(),
                    state,
                    required: InstanceState::Stopped,
                });
            }
            tx.execute(sql, params)?;
            Ok(())
        })
    }

    /// Deletes terminated instances that have been terminated for longer
    /// than [`TERMINATED_RETENTION`] at `now`, with their tags and emptied
    /// reservations. Returns the ids deleted.
    pub fn collect_terminated(&self, now: OffsetDateTime) -> Result<Vec<String>, DbError> {
        let cutoff = to_ms(now - TERMINATED_RETENTION);
        self.write(|tx| {
            let ids: Vec<String> = {
                let mut stmt = tx.prepare(
                    "SELECT id FROM instances
                     WHERE state = 'terminated' AND terminated_at_ms < ?1
                     ORDER BY id",
                )?;
                let rows = stmt.query_map([cutoff], |r| r.get(0))?;
                rows.collect::<Result<_, _>>()?
            };
            for id in &ids {
                delete_instance(tx, id)?;
            }
            Ok(ids)
        })
    }
}

const INSTANCE_SELECT: &str =
    "SELECT i.*, r.client_token AS client_token, r.created_ms AS created_ms
     FROM instances i JOIN reservations r ON r.id = i.reservation_id";

pub(super) fn insert_instance(tx: &Transaction<'_>, i: &Instance) -> Result<(), DbError> {
    let m = &i.metadata_options;
    tx.execute(
        "INSERT INTO instances (id, reservation_id, ami_launch_index, image_id, kernel_id,
            instance_type, key_name, state, state_reason_code, state_reason_message,
            state_transition_reason, launch_time_ms, user_data, shutdown_behavior,
            disable_api_termination, http_tokens, http_endpoint, http_put_response_hop_limit,
            instance_metadata_tags, hibernation_configured, root_volume_id, root_size_gib,
            root_delete_on_termination, root_path, availability_zone, vmm_pid, vmm_api_sock,
            vmm_serial_log, console_output_path, terminated_at_ms, cpu_credits,
            disable_api_stop)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
            ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30, ?31, ?32)",
        params![
            i.id,
            i.reservation_id,
            i.ami_launch_index,
            i.image_id,
            i.kernel_id,
            i.instance_type,
            i.key_name,
            i.state.name(),
            i.state_reason.as_ref().map(|r| &r.code),
            i.state_reason.as_ref().map(|r| &r.message),
            i.state_transition_reason,
            to_ms(i.launch_time),
            i.user_data,
            i.shutdown_behavior.name(),
            i.disable_api_termination,
            m.http_tokens.name(),
            m.http_endpoint.name(),
            m.http_put_response_hop_limit,
            m.instance_metadata_tags.name(),
            i.hibernation_configured,
            i.root_volume.volume_id,
            i.root_volume.size_gib,
            i.root_volume.delete_on_termination,
            path_text(&i.root_volume.path)?,
            i.placement.availability_zone,
            i.vmm.as_ref().map(|v| v.pid),
            i.vmm.as_ref().map(|v| path_text(&v.api_sock)).transpose()?,
            i.vmm
                .as_ref()
                .map(|v| path_text(&v.serial_log))
                .transpose()?,
            i.console_output_path
                .as_deref()
                .map(path_text)
                .transpose()?,
            i.terminated_at.map(to_ms),
            i.cpu_credits.map(CpuCredits::name),
            i.disable_api_stop,
        ],
    )
    .map_err(|e| unique_violation(e, IdKind::Instance, &i.id))?;
    insert_tags(tx, &i.id, &i.tags)?;
    insert_tags(tx, &i.root_volume.volume_id, &i.root_volume.tags)
}

fn instance_from_row(conn: &Connection, row: &Row<'_>) -> Result<Instance, DbError> {
    let id: String = row.get("id")?;
    let reason_code: Option<String> = row.get("state_reason_code")?;
    let reason_message: Option<String> = row.get("state_reason_message")?;
    let vmm_pid: Option<u32> = row.get("vmm_pid")?;
    let vmm_sock: Option<String> = row.get("vmm_api_sock")?;
    let vmm_log: Option<String> = row.get("vmm_serial_log")?;
    let tags = tags_of(conn, &id)?;
    let network_interfaces = network::interfaces_of_instance(conn, &id)?;
    Ok(Instance {
        network_interfaces,
        reservation_id: row.get("reservation_id")?,
        image_id: row.get("image_id")?,
        kernel_id: row.get("kernel_id")?,
        instance_type: row.get("instance_type")?,
        key_name: row.get("key_name")?,
        state: parse_column(row, "state", InstanceState::from_name)?,
        state_reason: match (reason_code, reason_message) {
            (Some(code), Some(message)) => Some(StateReason { code, message }),
            _ => None,
        },
        state_transition_reason: row.get("state_transition_reason")?,
        launch_time: from_ms(row.get("launch_time_ms")?)?,
        user_data: row.get("user_data")?,
        tags,
        shutdown_behavior: parse_column(row, "shutdown_behavior", ShutdownBehavior::from_name)?,
        disable_api_termination: row.get("disable_api_termination")?,
        disable_api_stop: row.get("disable_api_stop")?,
        cpu_credits: row
            .get::<_, Option<String>>("cpu_credits")?
            .map(|name| {
                CpuCredits::from_name(&name).ok_or(DbError::Corrupt {
                    column: "cpu_credits",
                    value: name,
                })
            })
            .transpose()?,
        metadata_options: MetadataOptions {
            http_tokens: parse_column(row, "http_tokens", HttpTokens::from_name)?,
            http_endpoint: parse_column(row, "http_endpoint", Toggle::from_name)?,
            http_put_response_hop_limit: row.get("http_put_response_hop_limit")?,
            instance_metadata_tags: parse_column(row, "instance_metadata_tags", Toggle::from_name)?,
        },
        hibernation_configured: row.get("hibernation_configured")?,
        root_volume: RootVolume {
            volume_id: row.get("root_volume_id")?,
            size_gib: row.get("root_size_gib")?,
            delete_on_termination: row.get("root_delete_on_termination")?,
            path: PathBuf::from(row.get::<_, String>("root_path")?),
            tags: tags_of(conn, &row.get::<_, String>("root_volume_id")?)?,
        },
        client_token: row.get("client_token")?,
        ami_launch_index: row.get("ami_launch_index")?,
        placement: Placement {
            availability_zone: row.get("availability_zone")?,
        },
        vmm: match (vmm_pid, vmm_sock, vmm_log) {
            (Some(pid), Some(sock), Some(log)) => Some(VmmHandle {
                pid,
                api_sock: PathBuf::from(sock),
                serial_log: PathBuf::from(log),
            }),
            _ => None,
        },
        console_output_path: row
            .get::<_, Option<String>>("console_output_path")?
            .map(PathBuf::from),
        terminated_at: row
            .get::<_, Option<i64>>("terminated_at_ms")?
            .map(from_ms)
            .transpose()?,
        id,
    })
}

/// The launch-order position of a row (reservation creation time,
/// reservation id, launch index) as the text inside a NextToken. The next
/// page resumes strictly after it in SQL, so it survives the deletion of
/// the row it names.
fn instance_sort_key(row: &Row<'_>) -> Result<String, DbError> {
    let created_ms: i64 = row.get("created_ms")?;
    let reservation_id: String = row.get("reservation_id")?;
    let index: u32 = row.get("ami_launch_index")?;
    Ok(format!("{created_ms}/{reservation_id}/{index}"))
}

fn decode_instance_key(key: &str) -> Option<(i64, String, i64)> {
    let mut parts = key.splitn(3, '/');
    let ms = parts.next()?.parse().ok()?;
    let rid = parts.next()?.to_string();
    let idx = parts.next()?.parse().ok()?;
    Some((ms, rid, idx))
}

fn get_instance(conn: &Connection, id: &str) -> Result<Instance, DbError> {
    query_first(
        conn,
        &format!("{INSTANCE_SELECT} WHERE i.id = ?1"),
        id,
        instance_from_row,
    )?
    .ok_or_else(|| not_found(IdKind::Instance, id))
}

pub(super) fn instance_state(conn: &Connection, id: &str) -> Result<InstanceState, DbError> {
    let name: Option<String> = conn
        .query_row("SELECT state FROM instances WHERE id = ?1", [id], |r| {
            r.get(0)
        })
        .optional()?;
    let name = name.ok_or_else(|| not_found(IdKind::Instance, id))?;
    InstanceState::from_name(&name).ok_or(DbError::Corrupt {
        column: "instances.state",
        value: name,
    })
}

fn delete_instance(tx: &Transaction<'_>, id: &str) -> Result<(), DbError> {
    let reservation_id: String = tx.query_row(
        "SELECT reservation_id FROM instances WHERE id = ?1",
        [id],
        |r| r.get(0),
    )?;
    network::release_interfaces(tx, id)?;
    tx.execute(
        "DELETE FROM tags WHERE resource_id = (SELECT root_volume_id FROM instances WHERE id = ?1)",
        [id],
    )?;
    tx.execute("DELETE FROM instances WHERE id = ?1", [id])?;
    tx.execute("DELETE FROM tags WHERE resource_id = ?1", [id])?;
    tx.execute(
        "DELETE FROM reservations WHERE id = ?1
           AND NOT EXISTS (SELECT 1 FROM instances WHERE reservation_id = ?1)",
        [&reservation_id],
    )?;
    Ok(())
}

fn reservation_by_token(conn: &Connection, token: &str) -> Result<Option<Reservation>, DbError> {
    let found: Option<(String, String, Option<String>)> = conn
        .query_row(
            "SELECT id, owner_id, launch_digest FROM reservations WHERE client_token = ?1",
            [token],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()?;
    let Some((id, owner_id, launch_digest)) = found else {
        return Ok(None);
    };
    let mut stmt = conn.prepare_cached(&format!(
        "{INSTANCE_SELECT} WHERE i.reservation_id = ?1 ORDER BY i.ami_launch_index"
    ))?;
    let mut rows = stmt.query([&id])?;
    let mut instances = Vec::new();
    while let Some(row) = rows.next()? {
        instances.push(instance_from_row(conn, row)?);
    }
    Ok(Some(Reservation {
        id,
        owner_id,
        client_token: Some(token.to_string()),
        launch_digest,
        instances,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_keys_round_trip() {
        let key = "1795734000000/r-0123456789abcdef0/7";
        assert_eq!(
            decode_instance_key(key),
            Some((1795734000000, "r-0123456789abcdef0".to_string(), 7))
        );
        assert_eq!(decode_instance_key("garbage"), None);
        assert_eq!(decode_instance_key("x/r/1"), None);
    }
}

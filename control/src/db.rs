//! The SQLite repository: schema migrations and typed queries.
//!
//! Everything the control plane remembers goes through [`Db`]; handlers never
//! see SQL. One connection behind a mutex is the one writer the design asks
//! for: SQLite serialises writers anyway, and holding the lock for a whole
//! transaction makes read-check-write sequences (compare-and-set on instance
//! state, idempotent ClientToken) atomic without retry loops.
//!
//! Times are stored as unix milliseconds, so values read back are truncated
//! to the millisecond (EC2 shows milliseconds too). User data is a BLOB.
//! Paths are stored as text and must be UTF-8; the daemon chooses them.
//!
//! ```
//! use ec2lab_control::db::{Db, InstanceQuery};
//! use ec2lab_control::model::filter::{Filter, PageRequest};
//! use ec2lab_control::model::state::{self, Event};
//!
//! let db = Db::open_in_memory()?;
//! let ids = db.bulk_insert_for_bench(12, time::OffsetDateTime::now_utc())?;
//!
//! // Stop one instance: read, ask the state machine, compare-and-set.
//! let now = time::OffsetDateTime::now_utc();
//! let current = db.get_instance(&ids[0])?;
//! let t = state::transition(&ids[0], current.state, &Event::StopRequested { force: false }, now)
//!     .expect("running instances can stop");
//! db.update_instance_state(&ids[0], &t, now)?;
//!
//! let page = db.list_instances(&InstanceQuery {
//!     filters: vec![Filter::new("instance-state-name", &["running"])],
//!     page: PageRequest { max_results: Some(5), next_token: None },
//!     ..InstanceQuery::default()
//! })?;
//! assert_eq!(page.items.len(), 5);
//! assert!(page.next_token.is_some());
//! # Ok::<(), ec2lab_control::db::DbError>(())
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row, Transaction, TransactionBehavior};
use time::OffsetDateTime;

mod network;

pub use network::NetworkQuery;

use crate::model::filter::{self, Filter, FilterError, Page, PageRequest};
use crate::model::ids::{self, IdKind};
use crate::model::state::{Transition, Update};
use crate::model::status::CheckinRecord;
use crate::model::vpc::{InterfaceRequest, IpamError};
use crate::model::{
    HttpTokens, Image, ImageKind, ImageState, Instance, InstanceState, KeyPair, KeyType,
    MetadataOptions, Placement, Reservation, RootVolume, ShutdownBehavior, StateReason, Tag, Tags,
    Toggle, VmmHandle,
};

/// How long terminated instances stay visible before [`Db::collect_terminated`]
/// forgets them (EC2 keeps them about an hour).
pub const TERMINATED_RETENTION: time::Duration = time::Duration::hours(1);

/// How long a second process (a CLI reading the same file) waits for the
/// daemon's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Schema versions, in order; `PRAGMA user_version` counts how many ran.
/// Never edit one that has shipped: append a new one.
const MIGRATIONS: &[&str] = &[
    // 1: instances, reservations, tags, key pairs, images.
    r#"
    CREATE TABLE reservations (
        id            TEXT PRIMARY KEY,
        owner_id      TEXT NOT NULL,
        client_token  TEXT UNIQUE,
        created_ms    INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE instances (
        id                          TEXT PRIMARY KEY,
        reservation_id              TEXT NOT NULL REFERENCES reservations(id) ON DELETE CASCADE,
        ami_launch_index            INTEGER NOT NULL,
        image_id                    TEXT NOT NULL,
        kernel_id                   TEXT,
        instance_type               TEXT NOT NULL,
        key_name                    TEXT,
        state                       TEXT NOT NULL,
        state_reason_code           TEXT,
        state_reason_message        TEXT,
        state_transition_reason     TEXT NOT NULL,
        launch_time_ms              INTEGER NOT NULL,
        user_data                   BLOB,
        shutdown_behavior           TEXT NOT NULL,
        disable_api_termination     INTEGER NOT NULL,
        http_tokens                 TEXT NOT NULL,
        http_endpoint               TEXT NOT NULL,
        http_put_response_hop_limit INTEGER NOT NULL,
        instance_metadata_tags      TEXT NOT NULL,
        hibernation_configured      INTEGER NOT NULL,
        root_volume_id              TEXT NOT NULL,
        root_size_gib               INTEGER NOT NULL,
        root_delete_on_termination  INTEGER NOT NULL,
        root_path                   TEXT NOT NULL,
        availability_zone           TEXT NOT NULL,
        vmm_pid                     INTEGER,
        vmm_api_sock                TEXT,
        vmm_serial_log              TEXT,
        console_output_path         TEXT,
        terminated_at_ms            INTEGER,
        UNIQUE (reservation_id, ami_launch_index)
    ) STRICT;
    CREATE INDEX instances_state ON instances(state);

    -- Tags of every resource kind; the resource type follows from the id.
    CREATE TABLE tags (
        resource_id  TEXT NOT NULL,
        key          TEXT NOT NULL,
        value        TEXT NOT NULL,
        PRIMARY KEY (resource_id, key)
    ) STRICT;

    CREATE TABLE key_pairs (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL UNIQUE,
        key_type     TEXT NOT NULL,
        fingerprint  TEXT NOT NULL,
        public_key   TEXT NOT NULL,
        created_ms   INTEGER NOT NULL
    ) STRICT;

    CREATE TABLE images (
        id               TEXT PRIMARY KEY,
        name             TEXT NOT NULL,
        kind             TEXT NOT NULL,
        dir              TEXT NOT NULL,
        description      TEXT,
        architecture     TEXT NOT NULL,
        kernel_id        TEXT,
        boot_mode        TEXT,
        default_user     TEXT,
        root_size_gib    INTEGER,
        digest           TEXT NOT NULL,
        owner_id         TEXT NOT NULL,
        state            TEXT NOT NULL,
        created_ms       INTEGER NOT NULL,
        deregistered_ms  INTEGER
    ) STRICT;
    -- EC2 refuses a second available image with the same name.
    CREATE UNIQUE INDEX images_available_name ON images(name) WHERE state = 'available';
    "#,
    // 2: VPCs, subnets, security groups, network interfaces.
    network::MIGRATION,
    // 3: instance status checks, one record per instance for its current
    // VMM (model::status).
    r#"
    CREATE TABLE instance_checkins (
        instance_id     TEXT PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
        vmm_started_ms  INTEGER NOT NULL,
        deadline_ms     INTEGER NOT NULL,
        checked_in_ms   INTEGER,
        boot_id         TEXT
    ) STRICT;
    "#,
];

/// What went wrong in the repository. The API maps each variant to an EC2
/// error code; `Sqlite` and `Corrupt` are internal errors.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The ids (or key pair names) name nothing. EC2:
    /// `InvalidInstanceID.NotFound` and friends (`IdKind::not_found_code`).
    #[error("{} {} not found", .kind.resource_type(), .ids.join(", "))]
    NotFound { kind: IdKind, ids: Vec<String> },
    /// A unique name or id is taken (`InvalidKeyPair.Duplicate`,
    /// `InvalidAMIName.Duplicate`).
    #[error("{} '{name}' already exists", .kind.resource_type())]
    Duplicate { kind: IdKind, name: String },
    /// Compare-and-set on an instance state lost a race: someone else moved
    /// the instance first. Re-read and decide again.
    #[error("instance '{id}' is {actual}, not {expected}")]
    StateConflict {
        id: String,
        expected: InstanceState,
        actual: InstanceState,
    },
    /// An attribute that can only change in one state (instance type and
    /// user data need `stopped`). EC2: IncorrectInstanceState.
    #[error("The instance '{id}' is not in the '{required}' state.")]
    IncorrectState {
        id: String,
        state: InstanceState,
        required: InstanceState,
    },
    /// The request conflicts with the resource's condition (an image already
    /// deregistered, an empty reservation).
    #[error("{} '{id}': {reason}", .kind.resource_type())]
    Conflict {
        kind: IdKind,
        id: String,
        reason: &'static str,
    },
    /// An id with no known resource prefix (EC2: InvalidID).
    #[error("The ID '{0}' is not valid")]
    InvalidId(String),
    /// No address for a new interface (in use, outside the subnet,
    /// reserved, or none left).
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// Filters or pagination parameters the model refused.
    #[error(transparent)]
    InvalidQuery(#[from] FilterError),
    /// A stored value the model does not understand: a bug or a hand edit.
    #[error("corrupt {column} in the database: {value:?}")]
    Corrupt { column: &'static str, value: String },
    /// A path to store is not UTF-8.
    #[error("path {0:?} is not UTF-8")]
    NonUtf8Path(PathBuf),
    /// The file has a newer schema than this binary knows.
    #[error("database schema version {found} is newer than this ec2lab ({known})")]
    SchemaTooNew { found: u32, known: u32 },
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

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

/// A DescribeImages query.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageQuery {
    pub image_ids: Vec<String>,
    pub filters: Vec<Filter>,
    pub page: PageRequest,
}

/// One `Tag.N` of DeleteTags: a key, and optionally the value it must have
/// (`Some("")` matches only an empty value, as in EC2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagSelector {
    pub key: String,
    pub value: Option<String>,
}

/// The repository. Cheap to share behind an `Arc`.
pub struct Db {
    conn: Mutex<Connection>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and migrates it.
    ///
    /// WAL lets readers in other processes (the CLI) read while the daemon
    /// writes; `synchronous=NORMAL` in WAL mode loses nothing when the daemon
    /// is killed, only possibly the last commits on power loss.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA foreign_keys = ON;")?;
        Db::with_connection(conn)
    }

    /// A private in-memory database, for tests.
    pub fn open_in_memory() -> Result<Db, DbError> {
        let conn = Connection::open_in_memory()?;
        conn.execute_batch("PRAGMA foreign_keys = ON;")?;
        Db::with_connection(conn)
    }

    fn with_connection(mut conn: Connection) -> Result<Db, DbError> {
        migrate(&mut conn)?;
        // Immediate, so that two processes opening a fresh file at once
        // (the daemon and a CLI) create one default VPC between them.
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        network::ensure_default_vpc(&tx, crate::model::DEFAULT_REGION)?;
        tx.commit()?;
        Ok(Db {
            conn: Mutex::new(conn),
        })
    }

    /// The schema version the file is at.
    pub fn schema_version(&self) -> Result<u32, DbError> {
        Ok(self
            .lock()
            .pragma_query_value(None, "user_version", |r| r.get(0))?)
    }

    /// The number of migrations this binary knows.
    pub fn latest_schema_version() -> u32 {
        MIGRATIONS.len() as u32
    }

    /// A poisoned lock is still usable: a panic inside a transaction drops
    /// the `Transaction`, which rolls back, so the connection is consistent.
    fn lock(&self) -> MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let mut conn = self.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let out = f(&tx)?;
        tx.commit()?;
        Ok(out)
    }

    // ---- instances -------------------------------------------------------

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
                "INSERT INTO reservations (id, owner_id, client_token, created_ms)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    reservation.id,
                    reservation.owner_id,
                    reservation.client_token,
                    to_ms(created)
                ],
            )
            .map_err(|e| unique_violation(e, IdKind::Reservation, &reservation.id))?;
            for instance in &mut reservation.instances {
                insert_instance(tx, instance)?;
                if let Some(request) = interface {
                    instance.network_interfaces = vec![network::create_primary_interface(
                        tx,
                        &instance.id,
                        request,
                        instance.launch_time,
                    )?];
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
        filter::validate::<Instance>(&query.filters)?;
        let size = query.page.page_size(filter::DESCRIBE_LIMITS)?;
        let after = match query.page.after()? {
            Some(key) => Some(decode_instance_key(&key).ok_or_else(|| {
                FilterError::InvalidToken(query.page.next_token.clone().unwrap_or_default())
            })?),
            None => None,
        };
        let conn = self.lock();
        if !query.instance_ids.is_empty() {
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
        let mut items: Vec<(Instance, String)> = Vec::new();
        while let Some(row) = rows.next()? {
            let key = instance_sort_key(row)?;
            let id: String = row.get("id")?;
            if !query.instance_ids.is_empty() && !query.instance_ids.contains(&id) {
                continue;
            }
            let instance = instance_from_row(&conn, row)?;
            if !filter::matches_all(&instance, &query.filters)? {
                continue;
            }
            items.push((instance, key));
            // One more than a page tells whether a next page exists.
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
                        metadata_options: MetadataOptions::default(),
                        hibernation_configured: false,
                        root_volume: RootVolume {
                            volume_id: ids::generate(IdKind::Volume),
                            size_gib: 1,
                            delete_on_termination: true,
                            path: PathBuf::from("/nonexistent/bench"),
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

    // ---- tags ------------------------------------------------------------

    /// CreateTags: adds or overwrites tags on every resource, all or
    /// nothing. Every resource must exist.
    pub fn create_tags(
        &self,
        resource_ids: &[String],
        tags: &[(String, String)],
    ) -> Result<(), DbError> {
        self.write(|tx| {
            check_resources_exist(tx, resource_ids)?;
            let mut stmt = tx.prepare_cached(
                "INSERT INTO tags (resource_id, key, value) VALUES (?1, ?2, ?3)
                 ON CONFLICT (resource_id, key) DO UPDATE SET value = excluded.value",
            )?;
            for id in resource_ids {
                for (key, value) in tags {
                    stmt.execute(params![id, key, value])?;
                }
            }
            Ok(())
        })
    }

    /// DeleteTags: with no selectors deletes every tag of the resources;
    /// otherwise each selector deletes its key (if its value matches, when
    /// given). Deleting a tag that is not there is not an error (EC2).
    pub fn delete_tags(
        &self,
        resource_ids: &[String],
        selectors: &[TagSelector],
    ) -> Result<(), DbError> {
        self.write(|tx| {
            check_resources_exist(tx, resource_ids)?;
            for id in resource_ids {
                if selectors.is_empty() {
                    tx.execute("DELETE FROM tags WHERE resource_id = ?1", [id])?;
                }
                for s in selectors {
                    match &s.value {
                        None => tx.execute(
                            "DELETE FROM tags WHERE resource_id = ?1 AND key = ?2",
                            params![id, s.key],
                        )?,
                        Some(v) => tx.execute(
                            "DELETE FROM tags WHERE resource_id = ?1 AND key = ?2 AND value = ?3",
                            params![id, s.key, v],
                        )?,
                    };
                }
            }
            Ok(())
        })
    }

    /// DescribeTags: ordered by resource id then key, filtered, one page.
    pub fn describe_tags(
        &self,
        filters: &[Filter],
        page: &PageRequest,
    ) -> Result<Page<Tag>, DbError> {
        filter::validate::<Tag>(filters)?;
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT resource_id, key, value FROM tags ORDER BY resource_id, key")?;
        let all: Vec<Tag> = stmt
            .query_map([], |r| {
                Ok(Tag {
                    resource_id: r.get(0)?,
                    key: r.get(1)?,
                    value: r.get(2)?,
                })
            })?
            .collect::<Result<_, _>>()?;
        let kept = filter::apply(all, filters)?;
        // NUL sorts before every other character, so this string order is
        // the (resource_id, key) order SQLite used.
        Ok(filter::paginate(
            kept,
            |t| format!("{}\0{}", t.resource_id, t.key),
            page,
            filter::DESCRIBE_LIMITS,
        )?)
    }

    /// The tags of one resource.
    pub fn tags_of(&self, resource_id: &str) -> Result<Tags, DbError> {
        tags_of(&self.lock(), resource_id)
    }

    // ---- key pairs -------------------------------------------------------

    /// CreateKeyPair / ImportKeyPair. Names are unique.
    pub fn insert_key_pair(&self, key: &KeyPair) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute(
                "INSERT INTO key_pairs (id, name, key_type, fingerprint, public_key, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    key.id,
                    key.name,
                    key.key_type.name(),
                    key.fingerprint,
                    key.public_key,
                    to_ms(key.created)
                ],
            )
            .map_err(|e| unique_violation(e, IdKind::KeyPair, &key.name))?;
            insert_tags(tx, &key.id, &key.tags)
        })
    }

    /// The key pair called `name`.
    pub fn get_key_pair_by_name(&self, name: &str) -> Result<KeyPair, DbError> {
        let conn = self.lock();
        key_pair_where(&conn, "name = ?1", name)?.ok_or_else(|| not_found(IdKind::KeyPair, name))
    }

    /// The key pair with id `id`.
    pub fn get_key_pair(&self, id: &str) -> Result<KeyPair, DbError> {
        let conn = self.lock();
        key_pair_where(&conn, "id = ?1", id)?.ok_or_else(|| not_found(IdKind::KeyPair, id))
    }

    /// DescribeKeyPairs, ordered by name. Explicit names or ids that do not
    /// exist fail the call (InvalidKeyPair.NotFound), as in EC2.
    pub fn list_key_pairs(
        &self,
        names: &[String],
        ids: &[String],
        filters: &[Filter],
    ) -> Result<Vec<KeyPair>, DbError> {
        filter::validate::<KeyPair>(filters)?;
        let conn = self.lock();
        let mut stmt = conn.prepare_cached(&format!("{KEY_PAIR_SELECT} ORDER BY name"))?;
        let mut rows = stmt.query([])?;
        let mut all = Vec::new();
        while let Some(row) = rows.next()? {
            all.push(key_pair_from_row(&conn, row)?);
        }
        let mut missing: Vec<String> = names
            .iter()
            .filter(|n| !all.iter().any(|k| &k.name == *n))
            .chain(ids.iter().filter(|i| !all.iter().any(|k| &k.id == *i)))
            .cloned()
            .collect();
        if !missing.is_empty() {
            missing.dedup();
            return Err(DbError::NotFound {
                kind: IdKind::KeyPair,
                ids: missing,
            });
        }
        let selected = all
            .into_iter()
            .filter(|k| names.is_empty() || names.contains(&k.name))
            .filter(|k| ids.is_empty() || ids.contains(&k.id))
            .collect();
        Ok(filter::apply(selected, filters)?)
    }

    /// DeleteKeyPair by name; `None` if there was none (EC2 answers success
    /// either way).
    pub fn delete_key_pair_by_name(&self, name: &str) -> Result<Option<KeyPair>, DbError> {
        self.delete_key_pair_where("name = ?1", name)
    }

    /// DeleteKeyPair by KeyPairId.
    pub fn delete_key_pair(&self, id: &str) -> Result<Option<KeyPair>, DbError> {
        self.delete_key_pair_where("id = ?1", id)
    }

    fn delete_key_pair_where(
        &self,
        condition: &'static str,
        value: &str,
    ) -> Result<Option<KeyPair>, DbError> {
        self.write(|tx| {
            let Some(key) = key_pair_where(tx, condition, value)? else {
                return Ok(None);
            };
            tx.execute("DELETE FROM key_pairs WHERE id = ?1", [&key.id])?;
            tx.execute("DELETE FROM tags WHERE resource_id = ?1", [&key.id])?;
            Ok(Some(key))
        })
    }

    // ---- images ----------------------------------------------------------

    /// RegisterImage / import. An id or name already available is a
    /// duplicate; a deregistered image with the same id is replaced, so
    /// re-importing an image brings it back under its content id.
    pub fn register_image(&self, image: &Image) -> Result<(), DbError> {
        self.write(|tx| {
            tx.execute(
                "DELETE FROM images WHERE id = ?1 AND state = 'deregistered'",
                [&image.id],
            )?;
            tx.execute(
                "INSERT INTO images (id, name, kind, dir, description, architecture, kernel_id,
                    boot_mode, default_user, root_size_gib, digest, owner_id, state, created_ms,
                    deregistered_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)",
                params![
                    image.id,
                    image.name,
                    image.kind.name(),
                    path_text(&image.dir)?,
                    image.description,
                    image.architecture,
                    image.kernel_id,
                    image.boot_mode,
                    image.default_user,
                    image.root_size_gib,
                    image.digest,
                    image.owner_id,
                    image.state.name(),
                    to_ms(image.created),
                    image.deregistered.map(to_ms),
                ],
            )
            .map_err(|e| unique_violation(e, image.kind.id_kind(), &image.name))?;
            tx.execute("DELETE FROM tags WHERE resource_id = ?1", [&image.id])?;
            insert_tags(tx, &image.id, &image.tags)
        })
    }

    /// One image, deregistered ones included.
    pub fn get_image(&self, id: &str) -> Result<Image, DbError> {
        let conn = self.lock();
        image_where(&conn, "id = ?1", id)?.ok_or_else(|| not_found(IdKind::Image, id))
    }

    /// DescribeImages, ordered by id. Explicit ids that do not exist fail
    /// the call (InvalidAMIID.NotFound).
    pub fn list_images(&self, query: &ImageQuery) -> Result<Page<Image>, DbError> {
        filter::validate::<Image>(&query.filters)?;
        let conn = self.lock();
        if !query.image_ids.is_empty() {
            let missing = missing_ids(&conn, "images", &query.image_ids)?;
            if !missing.is_empty() {
                return Err(DbError::NotFound {
                    kind: IdKind::Image,
                    ids: missing,
                });
            }
        }
        let mut stmt = conn.prepare_cached(&format!("{IMAGE_SELECT} ORDER BY id"))?;
        let mut rows = stmt.query([])?;
        let mut all = Vec::new();
        while let Some(row) = rows.next()? {
            let image = image_from_row(&conn, row)?;
            if query.image_ids.is_empty() || query.image_ids.contains(&image.id) {
                all.push(image);
            }
        }
        let kept = filter::apply(all, &query.filters)?;
        Ok(filter::paginate(
            kept,
            |i| i.id.clone(),
            &query.page,
            filter::DESCRIBE_LIMITS,
        )?)
    }

    /// DeregisterImage: the image stays visible as `deregistered`.
    pub fn deregister_image(&self, id: &str, now: OffsetDateTime) -> Result<Image, DbError> {
        self.write(|tx| {
            let mut image =
                image_where(tx, "id = ?1", id)?.ok_or_else(|| not_found(IdKind::Image, id))?;
            if image.state == ImageState::Deregistered {
                return Err(DbError::Conflict {
                    kind: image.kind.id_kind(),
                    id: id.to_string(),
                    reason: "already deregistered",
                });
            }
            image.state = ImageState::Deregistered;
            image.deregistered = Some(truncate_ms(now));
            tx.execute(
                "UPDATE images SET state = 'deregistered', deregistered_ms = ?2 WHERE id = ?1",
                params![id, image.deregistered.map(to_ms)],
            )?;
            Ok(image)
        })
    }
}

// ---- migrations ----------------------------------------------------------

/// Brings the schema to the latest version in one transaction: a failed
/// migration leaves the file as it was.
fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    let known = MIGRATIONS.len() as u32;
    if found > known {
        return Err(DbError::SchemaTooNew { found, known });
    }
    for sql in &MIGRATIONS[found as usize..] {
        tx.execute_batch(sql)?;
    }
    if found != known {
        tx.pragma_update(None, "user_version", known)?;
        log::info!("database schema migrated from version {found} to {known}");
    }
    tx.commit()?;
    Ok(())
}

// ---- row mapping -----------------------------------------------------------

const INSTANCE_SELECT: &str =
    "SELECT i.*, r.client_token AS client_token, r.created_ms AS created_ms
     FROM instances i JOIN reservations r ON r.id = i.reservation_id";

const KEY_PAIR_SELECT: &str = "SELECT * FROM key_pairs";

const IMAGE_SELECT: &str = "SELECT * FROM images";

fn insert_instance(tx: &Transaction<'_>, i: &Instance) -> Result<(), DbError> {
    let m = &i.metadata_options;
    tx.execute(
        "INSERT INTO instances (id, reservation_id, ami_launch_index, image_id, kernel_id,
            instance_type, key_name, state, state_reason_code, state_reason_message,
            state_transition_reason, launch_time_ms, user_data, shutdown_behavior,
            disable_api_termination, http_tokens, http_endpoint, http_put_response_hop_limit,
            instance_metadata_tags, hibernation_configured, root_volume_id, root_size_gib,
            root_delete_on_termination, root_path, availability_zone, vmm_pid, vmm_api_sock,
            vmm_serial_log, console_output_path, terminated_at_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
            ?18, ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26, ?27, ?28, ?29, ?30)",
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
        ],
    )
    .map_err(|e| unique_violation(e, IdKind::Instance, &i.id))?;
    insert_tags(tx, &i.id, &i.tags)
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

/// The first row `sql` (with `value` as `?1`) selects, read by `from_row`
/// (which may query further on the same connection, e.g. for tags).
fn query_first<T>(
    conn: &Connection,
    sql: &str,
    value: &str,
    from_row: impl FnOnce(&Connection, &Row<'_>) -> Result<T, DbError>,
) -> Result<Option<T>, DbError> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query([value])?;
    rows.next()?.map(|row| from_row(conn, row)).transpose()
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

fn instance_state(conn: &Connection, id: &str) -> Result<InstanceState, DbError> {
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
    let found: Option<(String, String)> = conn
        .query_row(
            "SELECT id, owner_id FROM reservations WHERE client_token = ?1",
            [token],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    let Some((id, owner_id)) = found else {
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
        instances,
    }))
}

fn key_pair_where(
    conn: &Connection,
    condition: &'static str,
    value: &str,
) -> Result<Option<KeyPair>, DbError> {
    query_first(
        conn,
        &format!("{KEY_PAIR_SELECT} WHERE {condition}"),
        value,
        key_pair_from_row,
    )
}

fn key_pair_from_row(conn: &Connection, row: &Row<'_>) -> Result<KeyPair, DbError> {
    let id: String = row.get("id")?;
    Ok(KeyPair {
        name: row.get("name")?,
        key_type: parse_column(row, "key_type", KeyType::from_name)?,
        fingerprint: row.get("fingerprint")?,
        public_key: row.get("public_key")?,
        created: from_ms(row.get("created_ms")?)?,
        tags: tags_of(conn, &id)?,
        id,
    })
}

fn image_where(
    conn: &Connection,
    condition: &'static str,
    value: &str,
) -> Result<Option<Image>, DbError> {
    query_first(
        conn,
        &format!("{IMAGE_SELECT} WHERE {condition}"),
        value,
        image_from_row,
    )
}

fn image_from_row(conn: &Connection, row: &Row<'_>) -> Result<Image, DbError> {
    let id: String = row.get("id")?;
    Ok(Image {
        name: row.get("name")?,
        kind: parse_column(row, "kind", ImageKind::from_name)?,
        dir: PathBuf::from(row.get::<_, String>("dir")?),
        description: row.get("description")?,
        architecture: row.get("architecture")?,
        kernel_id: row.get("kernel_id")?,
        boot_mode: row.get("boot_mode")?,
        default_user: row.get("default_user")?,
        root_size_gib: row.get("root_size_gib")?,
        digest: row.get("digest")?,
        owner_id: row.get("owner_id")?,
        state: parse_column(row, "state", ImageState::from_name)?,
        created: from_ms(row.get("created_ms")?)?,
        deregistered: row
            .get::<_, Option<i64>>("deregistered_ms")?
            .map(from_ms)
            .transpose()?,
        tags: tags_of(conn, &id)?,
        id,
    })
}

fn tags_of(conn: &Connection, resource_id: &str) -> Result<Tags, DbError> {
    let mut stmt = conn.prepare_cached("SELECT key, value FROM tags WHERE resource_id = ?1")?;
    let rows = stmt.query_map([resource_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    Ok(rows.collect::<Result<BTreeMap<_, _>, _>>()?)
}

fn insert_tags(tx: &Transaction<'_>, resource_id: &str, tags: &Tags) -> Result<(), DbError> {
    let mut stmt =
        tx.prepare_cached("INSERT INTO tags (resource_id, key, value) VALUES (?1, ?2, ?3)")?;
    for (key, value) in tags {
        stmt.execute(params![resource_id, key, value])?;
    }
    Ok(())
}

/// CreateTags and DeleteTags need every named resource to exist.
fn check_resources_exist(conn: &Connection, resource_ids: &[String]) -> Result<(), DbError> {
    for id in resource_ids {
        let kind = IdKind::of(id).ok_or_else(|| DbError::InvalidId(id.clone()))?;
        let table = match kind {
            IdKind::Instance => "instances",
            IdKind::Image | IdKind::Kernel => "images",
            IdKind::KeyPair => "key_pairs",
            IdKind::Vpc => "vpcs",
            IdKind::Subnet => "subnets",
            IdKind::SecurityGroup => "security_groups",
            IdKind::NetworkInterface => "network_interfaces",
            _ => return Err(not_found(kind, id)),
        };
        if !missing_ids(conn, table, std::slice::from_ref(id))?.is_empty() {
            return Err(not_found(kind, id));
        }
    }
    Ok(())
}

/// The ids in `ids` that have no row in `table`, in the order given.
fn missing_ids(conn: &Connection, table: &str, ids: &[String]) -> Result<Vec<String>, DbError> {
    let mut stmt = conn.prepare_cached(&format!("SELECT 1 FROM {table} WHERE id = ?1"))?;
    let mut missing = Vec::new();
    for id in ids {
        if !stmt.exists([id])? && !missing.contains(id) {
            missing.push(id.clone());
        }
    }
    Ok(missing)
}

fn parse_column<T>(
    row: &Row<'_>,
    column: &'static str,
    parse: fn(&str) -> Option<T>,
) -> Result<T, DbError> {
    let text: String = row.get(column)?;
    parse(&text).ok_or(DbError::Corrupt {
        column,
        value: text,
    })
}

fn not_found(kind: IdKind, id: &str) -> DbError {
    DbError::NotFound {
        kind,
        ids: vec![id.to_string()],
    }
}

/// Turns a UNIQUE violation into `Duplicate`, anything else into `Sqlite`.
fn unique_violation(e: rusqlite::Error, kind: IdKind, name: &str) -> DbError {
    match e.sqlite_error_code() {
        Some(rusqlite::ErrorCode::ConstraintViolation) => DbError::Duplicate {
            kind,
            name: name.to_string(),
        },
        _ => DbError::Sqlite(e),
    }
}

fn path_text(path: &Path) -> Result<&str, DbError> {
    path.to_str()
        .ok_or_else(|| DbError::NonUtf8Path(path.to_path_buf()))
}

fn to_ms(t: OffsetDateTime) -> i64 {
    // i64 milliseconds cover ±292 million years; OffsetDateTime cannot leave
    // that range, so the narrowing never truncates.
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

fn from_ms(ms: i64) -> Result<OffsetDateTime, DbError> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).map_err(|_| {
        DbError::Corrupt {
            column: "timestamp",
            value: ms.to_string(),
        }
    })
}

/// `t` as it will read back from the database.
pub fn truncate_ms(t: OffsetDateTime) -> OffsetDateTime {
    let ms = to_ms(t);
    from_ms(ms).unwrap_or(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_database_migrates_to_latest() {
        let db = Db::open_in_memory().expect("open");
        assert_eq!(
            db.schema_version().expect("version"),
            Db::latest_schema_version()
        );
    }

    #[test]
    fn migrating_twice_changes_nothing() {
        let mut conn = Connection::open_in_memory().expect("open");
        migrate(&mut conn).expect("first");
        migrate(&mut conn).expect("second");
        let v: u32 = conn
            .pragma_query_value(None, "user_version", |r| r.get(0))
            .expect("version");
        assert_eq!(v, MIGRATIONS.len() as u32);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let mut conn = Connection::open_in_memory().expect("open");
        conn.pragma_update(None, "user_version", 999).expect("set");
        assert!(matches!(
            migrate(&mut conn),
            Err(DbError::SchemaTooNew { found: 999, .. })
        ));
    }

    #[test]
    fn ms_round_trip() {
        let t = time::macros::datetime!(2026-11-25 23:00:00.123456 UTC);
        let back = from_ms(to_ms(t)).expect("in range");
        assert_eq!(back, time::macros::datetime!(2026-11-25 23:00:00.123 UTC));
        assert_eq!(truncate_ms(t), back);
    }

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

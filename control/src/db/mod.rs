//! The SQLite repository: schema migrations and typed queries.
//!
//! One file per resource family, each an `impl Db` block beside its row
//! mapping: `instances` (reservations, state transitions, attributes),
//! `instance_status` (agent check-ins), `tags`, `key_pairs`, `images`,
//! `network` (VPCs, subnets, security groups and their rules, interfaces)
//! and `bench` (bulk records for benchmarks only). This file holds what they
//! share: the connection, the migrations, [`DbError`] and the conversions.
//! The error stays one enum for the whole store because the API maps it to
//! EC2 codes in one place and every family can fail the same ways
//! (not found, duplicate, corrupt row, SQLite).
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

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{Connection, Row, Transaction, TransactionBehavior};
use time::OffsetDateTime;

mod addresses;
mod bench;
mod images;
mod instance_status;
mod instances;
mod key_pairs;
mod network;
mod routing;
mod security_groups;
mod tags;

pub use addresses::{AddressQuery, AddressRef, Association, AssociationTarget};
pub use images::ImageQuery;
pub use instances::{InsertOutcome, InstanceQuery, TERMINATED_RETENTION};
pub use network::{InterfaceChange, NetworkQuery};
pub use security_groups::{NewSecurityGroup, RevokeRequest};
pub use tags::TagSelector;

use crate::model::filter::FilterError;
use crate::model::ids::IdKind;
use crate::model::security_group::SecurityGroupError;
use crate::model::state::InstanceState;
use crate::model::vpc::IpamError;
use crate::model::MAX_TAGS_PER_RESOURCE;

/// How long a second process (a CLI reading the same file) waits for the
/// daemon's write lock before giving up.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// One schema version: SQL, or code for what SQL cannot say alone (a
/// backfill that must create rows exactly as the running code would).
enum Migration {
    Sql(&'static str),
    Code(fn(&Transaction<'_>) -> Result<(), DbError>),
}

/// Schema versions, in order; `PRAGMA user_version` counts how many ran.
/// Never edit one that has shipped: append a new one.
const MIGRATIONS: &[Migration] = &[
    // 1: instances, reservations, tags, key pairs, images.
    Migration::Sql(
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
    ),
    // 2: VPCs, subnets, security groups, network interfaces.
    Migration::Sql(network::MIGRATION),
    // 3: instance status checks, one record per instance for its current
    // VMM (model::status).
    Migration::Sql(
        r#"
    CREATE TABLE instance_checkins (
        instance_id     TEXT PRIMARY KEY REFERENCES instances(id) ON DELETE CASCADE,
        vmm_started_ms  INTEGER NOT NULL,
        deadline_ms     INTEGER NOT NULL,
        checked_in_ms   INTEGER,
        boot_id         TEXT
    ) STRICT;
    "#,
    ),
    // 4: security group rules, with each existing group's standard rules.
    Migration::Code(network::migrate_rules),
    // 5: security group rule ids (`sgr-…`), given to existing rules too.
    Migration::Code(network::migrate_rule_ids),
    // 6: the CPU credit option of burstable instances (NULL: the type's
    // default, model::CpuCredits::default_for).
    Migration::Sql("ALTER TABLE instances ADD COLUMN cpu_credits TEXT;"),
    // 7: stop protection (DisableApiStop), off for the instances before it.
    Migration::Sql("ALTER TABLE instances ADD COLUMN disable_api_stop INTEGER NOT NULL DEFAULT 0;"),
    // 8: what each token's RunInstances asked for (model::Reservation).
    Migration::Sql("ALTER TABLE reservations ADD COLUMN launch_digest TEXT;"),
    // 9: public IPv4 addresses of interfaces (network::PUBLIC_IP_MIGRATION).
    Migration::Sql(network::PUBLIC_IP_MIGRATION),
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
    /// Tags would exceed [`MAX_TAGS_PER_RESOURCE`] on a resource (EC2:
    /// TagLimitExceeded).
    #[error("The resource '{resource_id}' would have {count} tags; at most {MAX_TAGS_PER_RESOURCE} are allowed")]
    TagLimitExceeded { resource_id: String, count: usize },
    /// An id with no known resource prefix (EC2: InvalidID).
    #[error("The ID '{0}' is not valid")]
    InvalidId(String),
    /// No address for a new interface (in use, outside the subnet,
    /// reserved, or none left).
    #[error(transparent)]
    Ipam(#[from] IpamError),
    /// An Elastic IP operation EC2 refuses.
    #[error(transparent)]
    Address(#[from] crate::model::address::AddressError),
    /// A security group or rule change EC2 refuses (duplicate, limit,
    /// dependency, bad protocol or ports).
    #[error(transparent)]
    SecurityGroup(#[from] SecurityGroupError),
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
    /// The database file could not be made private (0600).
    #[error("cannot make {path:?} private: {source}")]
    Private {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl DbError {
    /// SQLite found no room on the disk for the write.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            DbError::Sqlite(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::DiskFull
        )
    }
}

/// Disk space kept so that the database can still be written when the
/// disk fills (`crate::reserve::DiskReserve`).
pub trait KeptRoom: Send + Sync {
    /// Called before every write: gives the space back if the disk is
    /// nearly full.
    fn before_write(&self);
    /// Gives the space back now (a write found the disk full).
    fn release(&self);
}

impl<T: KeptRoom> KeptRoom for std::sync::Arc<T> {
    fn before_write(&self) {
        (**self).before_write();
    }

    fn release(&self) {
        (**self).release();
    }
}

/// The repository. Cheap to share behind an `Arc`.
pub struct Db {
    conn: Mutex<Connection>,
    /// Disk space kept for the database's writes on a full disk.
    room: std::sync::OnceLock<Box<dyn KeptRoom>>,
}

impl Db {
    /// Opens (creating if needed) the database at `path` and migrates it.
    ///
    /// WAL lets readers in other processes (the CLI) read while the daemon
    /// writes; `synchronous=NORMAL` in WAL mode loses nothing when the daemon
    /// is killed, only possibly the last commits on power loss.
    ///
    /// The file and its WAL and shared-memory companions are made 0600:
    /// they hold user data and key material, whoever created them.
    pub fn open(path: &Path) -> Result<Db, DbError> {
        let conn = Connection::open(path)?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        let _mode: String = conn.query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))?;
        make_private(path)?;
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
            room: std::sync::OnceLock::new(),
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

    /// Runs `f` in an immediate transaction and commits it. Before it, a
    /// nearly full disk gets back the room kept for the database
    /// ([`Db::keep_room`]), so that terminating instances (which frees
    /// their volumes) works on a full disk; a write that finds the disk
    /// full gives it back for the next one.
    fn write<T>(
        &self,
        f: impl FnOnce(&Transaction<'_>) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        let room = self.room.get();
        if let Some(room) = room {
            room.before_write();
        }
        let result = (|| -> Result<T, DbError> {
            let mut conn = self.lock();
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })();
        if let (Err(e), Some(room)) = (&result, room) {
            if e.is_disk_full() {
                room.release();
            }
        }
        result
    }

    /// Has `room` keep disk space for the database's writes.
    pub fn keep_room(&self, room: impl KeptRoom + 'static) {
        let _ = self.room.set(Box::new(room));
    }
}

// ---- migrations ----------------------------------------------------------

/// Brings the schema to the latest version in one transaction: a failed
/// migration leaves the file as it was.
fn migrate(conn: &mut Connection) -> Result<(), DbError> {
    migrate_to(conn, MIGRATIONS.len())
}

/// Runs the migrations up to version `target` (at most the latest). Tests
/// stop short of the latest to build a file as an older ec2lab left it.
fn migrate_to(conn: &mut Connection, target: usize) -> Result<(), DbError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let found: u32 = tx.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if found as usize > MIGRATIONS.len() {
        return Err(DbError::SchemaTooNew {
            found,
            known: MIGRATIONS.len() as u32,
        });
    }
    let pending = MIGRATIONS.get(found as usize..target).unwrap_or_default();
    let known = found + pending.len() as u32;
    for migration in pending {
        match migration {
            Migration::Sql(sql) => tx.execute_batch(sql)?,
            Migration::Code(run) => run(&tx)?,
        }
    }
    if found != known {
        tx.pragma_update(None, "user_version", known)?;
        log::info!("database schema migrated from version {found} to {known}");
    }
    tx.commit()?;
    Ok(())
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

/// Sets the database file and its `-wal`/`-shm` companions (those that
/// exist) to 0600.
fn make_private(path: &Path) -> Result<(), DbError> {
    use std::os::unix::fs::PermissionsExt;
    let mut companions = vec![path.to_path_buf()];
    for suffix in ["-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        companions.push(name.into());
    }
    for file in companions {
        match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => return Err(DbError::Private { path: file, source }),
        }
    }
    Ok(())
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
}

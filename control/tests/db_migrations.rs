//! Opening, migrating and re-opening a real database file.

mod db_support;

use db_support::{at, reservation, temp_db};
use ec2lab_control::db::{Db, DbError};

#[test]
fn a_new_file_is_migrated_to_the_latest_schema() {
    let (_dir, db) = temp_db();
    assert_eq!(
        db.schema_version().expect("version"),
        Db::latest_schema_version()
    );
}

#[test]
fn reopening_is_idempotent_and_keeps_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ec2lab.db");
    let r = reservation(2, Some("token-1"), at(0));
    {
        let db = Db::open(&path).expect("first open");
        db.insert_reservation_with_instances(&r).expect("insert");
    }
    for _ in 0..2 {
        let db = Db::open(&path).expect("reopen");
        assert_eq!(
            db.schema_version().expect("version"),
            Db::latest_schema_version()
        );
        let got = db.get_instance(&r.instances[1].id).expect("still there");
        assert_eq!(got, r.instances[1]);
    }
}

#[test]
fn the_file_is_in_wal_mode() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ec2lab.db");
    let _db = Db::open(&path).expect("open");
    let conn = rusqlite::Connection::open(&path).expect("second connection");
    let mode: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .expect("journal mode");
    assert_eq!(mode, "wal");
}

#[test]
fn a_file_from_a_newer_ec2lab_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ec2lab.db");
    drop(Db::open(&path).expect("create"));
    let conn = rusqlite::Connection::open(&path).expect("raw open");
    conn.pragma_update(None, "user_version", Db::latest_schema_version() + 1)
        .expect("bump version");
    drop(conn);
    assert!(matches!(Db::open(&path), Err(DbError::SchemaTooNew { .. })));
}

//! The instance status-check records: reset per VMM start, a check-in
//! recorded against the current one, kept across reopening the file, and
//! gone with their instance.

use ec2lab_control::db::{Db, DbError};
use ec2lab_control::model::state::{self, Event, VmmExit};
use ec2lab_control::model::status::{CheckinRecord, InstanceHealth};
use std::time::Duration;
use time::OffsetDateTime;

fn now() -> OffsetDateTime {
    ec2lab_control::db::truncate_ms(OffsetDateTime::now_utc())
}

#[test]
fn a_check_in_is_recorded_survives_reopening_and_is_reset_by_the_next_vmm_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ec2lab.db");
    let t0 = now();
    let id = {
        let db = Db::open(&path).expect("open");
        let id = db.bulk_insert_for_bench(1, t0).expect("insert").remove(0);
        assert_eq!(db.checkin_record(&id).expect("read"), None);
        assert!(
            !db.record_checkin(&id, t0, "abc").expect("record"),
            "no VMM start recorded yet: nothing to check in against"
        );
        let started = CheckinRecord::started(t0, Duration::from_secs(600));
        db.reset_checkin(&id, &started).expect("reset");
        assert!(db
            .record_checkin(&id, t0 + Duration::from_secs(50), "abc")
            .expect("record"));
        id
    };
    let db = Db::open(&path).expect("reopen");
    let record = db.checkin_record(&id).expect("read").expect("kept");
    assert_eq!(record.checked_in, Some(t0 + Duration::from_secs(50)));
    assert_eq!(record.boot_id.as_deref(), Some("abc"));
    assert_eq!(
        record.health_at(t0 + Duration::from_secs(60)),
        InstanceHealth::Ok
    );

    // A reboot starts a new VMM: back to initializing, then impaired.
    let t1 = t0 + Duration::from_secs(120);
    db.reset_checkin(&id, &CheckinRecord::started(t1, Duration::from_secs(10)))
        .expect("reset");
    let record = db.checkin_record(&id).expect("read").expect("kept");
    assert_eq!(record.checked_in, None);
    assert_eq!(record.health_at(t1), InstanceHealth::Initializing);
    assert_eq!(
        record.health_at(t1 + Duration::from_secs(11)),
        InstanceHealth::Impaired {
            since: t1 + Duration::from_secs(10)
        }
    );
}

#[test]
fn records_need_an_instance_and_go_with_it() {
    let db = Db::open_in_memory().expect("open");
    let long_ago = now() - Duration::from_secs(3 * 3600);
    let record = CheckinRecord::started(long_ago, Duration::from_secs(600));
    assert!(matches!(
        db.reset_checkin("i-0123456789abcdef0", &record),
        Err(DbError::NotFound { .. })
    ));
    let id = db
        .bulk_insert_for_bench(1, long_ago)
        .expect("insert")
        .remove(0);
    db.reset_checkin(&id, &record).expect("reset");
    for event in [
        Event::TerminateRequested,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
    ] {
        let current = db.get_instance(&id).expect("get").state;
        let t = state::transition(&id, current, &event, long_ago).expect("transition");
        db.update_instance_state(&id, &t, long_ago).expect("update");
    }
    assert_eq!(
        db.collect_terminated(now()).expect("collect"),
        vec![id.clone()]
    );
    assert_eq!(db.checkin_record(&id).expect("read"), None);
}

/// The database holds user data and key material: it and its WAL are
/// private whoever created them and whatever the umask was.
#[test]
fn the_database_and_its_wal_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ec2lab.db");
    std::fs::write(&path, b"").expect("create");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let db = Db::open(&path).expect("open");
    db.bulk_insert_for_bench(1, now()).expect("insert");
    drop(db);
    let db = Db::open(&path).expect("reopen");
    for name in ["ec2lab.db", "ec2lab.db-wal", "ec2lab.db-shm"] {
        let file = dir.path().join(name);
        if let Ok(meta) = std::fs::metadata(&file) {
            assert_eq!(meta.permissions().mode() & 0o777, 0o600, "{name}");
        }
    }
    drop(db);
}

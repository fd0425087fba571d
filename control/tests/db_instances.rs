//! Instances in a real SQLite file: launch records, idempotency, state
//! compare-and-set, attributes, garbage collection, filters and pages.

mod db_support;

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;

use db_support::{at, reservation, temp_db};
use ec2lab_control::db::{DbError, InsertOutcome, InstanceQuery, TERMINATED_RETENTION};
use ec2lab_control::model::filter::{Filter, FilterError, PageRequest};
use ec2lab_control::model::ids::IdKind;
use ec2lab_control::model::state::{self, Event, ShutdownBehavior, VmmExit};
use ec2lab_control::model::{InstanceState, StateReason, Tags, VmmHandle};

fn apply(
    db: &ec2lab_control::db::Db,
    id: &str,
    event: Event,
    now: time::OffsetDateTime,
) -> Result<ec2lab_control::model::Instance, DbError> {
    let current = db.get_instance(id)?;
    let t = state::transition(id, current.state, &event, now).expect("legal transition");
    db.update_instance_state(id, &t, now)
}

fn query(filters: Vec<Filter>) -> InstanceQuery {
    InstanceQuery {
        filters,
        ..InstanceQuery::default()
    }
}

#[test]
fn a_reservation_round_trips_field_for_field() {
    let (_dir, db) = temp_db();
    let mut r = reservation(3, None, at(0));
    r.instances[0].tags = Tags::from([("Name".into(), "web".into()), ("env".into(), "".into())]);
    r.instances[1].user_data = None;
    r.instances[2].vmm = Some(VmmHandle {
        pid: 4242,
        api_sock: PathBuf::from("/run/ec2lab/i.sock"),
        serial_log: PathBuf::from("/run/ec2lab/i.log"),
    });
    assert_eq!(
        db.insert_reservation_with_instances(&r).expect("insert"),
        InsertOutcome::Created
    );
    for want in &r.instances {
        assert_eq!(&db.get_instance(&want.id).expect("get"), want);
    }
    let all = db.all_instances().expect("list");
    assert_eq!(all, r.instances, "launch index order");
}

#[test]
fn unknown_instance_is_not_found() {
    let (_dir, db) = temp_db();
    match db.get_instance("i-0123456789abcdef0") {
        Err(DbError::NotFound { kind, ids }) => {
            assert_eq!(kind, IdKind::Instance);
            assert_eq!(ids, vec!["i-0123456789abcdef0".to_string()]);
        }
        other => panic!("expected NotFound, got {other:?}"),
    }
}

#[test]
fn a_client_token_makes_run_instances_idempotent() {
    let (_dir, db) = temp_db();
    let first = reservation(2, Some("abc"), at(0));
    assert_eq!(
        db.insert_reservation_with_instances(&first).expect("first"),
        InsertOutcome::Created
    );
    let retry = reservation(2, Some("abc"), at(5));
    match db.insert_reservation_with_instances(&retry).expect("retry") {
        InsertOutcome::Existing(existing) => {
            assert_eq!(existing.id, first.id);
            assert_eq!(existing.instances, first.instances);
        }
        InsertOutcome::Created => panic!("a retry must not launch again"),
    }
    assert!(matches!(
        db.get_instance(&retry.instances[0].id),
        Err(DbError::NotFound { .. })
    ));
    let found = db
        .find_reservation_by_client_token("abc")
        .expect("lookup")
        .expect("present");
    assert_eq!(found.id, first.id);
    assert!(db
        .find_reservation_by_client_token("other")
        .expect("lookup")
        .is_none());
    let other = reservation(1, Some("other"), at(6));
    assert_eq!(
        db.insert_reservation_with_instances(&other)
            .expect("other token"),
        InsertOutcome::Created
    );
    assert_eq!(db.all_instances().expect("list").len(), 3);
}

#[test]
fn a_failed_insert_leaves_nothing_behind() {
    let (_dir, db) = temp_db();
    let first = reservation(1, None, at(0));
    db.insert_reservation_with_instances(&first).expect("first");
    // Second reservation whose second instance reuses an existing id.
    let mut second = reservation(2, None, at(1));
    second.instances[1].id = first.instances[0].id.clone();
    assert!(matches!(
        db.insert_reservation_with_instances(&second),
        Err(DbError::Duplicate { .. })
    ));
    assert!(matches!(
        db.get_instance(&second.instances[0].id),
        Err(DbError::NotFound { .. })
    ));
    assert_eq!(db.all_instances().expect("list").len(), 1);
}

#[test]
fn state_updates_compare_and_set_on_the_previous_state() {
    let (_dir, db) = temp_db();
    let r = reservation(1, None, at(0));
    db.insert_reservation_with_instances(&r).expect("insert");
    let id = &r.instances[0].id;

    let stale = db.get_instance(id).expect("get");
    let running = apply(&db, id, Event::VmmStarted, at(1)).expect("boot");
    assert_eq!(running.state, InstanceState::Running);
    assert_eq!(running.state_reason, None);

    // A transition computed from the stale (pending) read loses.
    let t = state::transition(id, stale.state, &Event::VmmStarted, at(2)).expect("legal");
    match db.update_instance_state(id, &t, at(2)) {
        Err(DbError::StateConflict {
            expected, actual, ..
        }) => {
            assert_eq!(expected, InstanceState::Pending);
            assert_eq!(actual, InstanceState::Running);
        }
        other => panic!("expected StateConflict, got {other:?}"),
    }
    assert_eq!(
        db.get_instance(id).expect("get").state,
        InstanceState::Running
    );
}

#[test]
fn concurrent_transitions_from_the_same_state_have_one_winner() {
    let (_dir, db) = temp_db();
    let db = Arc::new(db);
    let r = reservation(1, None, at(0));
    db.insert_reservation_with_instances(&r).expect("insert");
    let id = r.instances[0].id.clone();
    apply(&db, &id, Event::VmmStarted, at(1)).expect("boot");

    let events = [
        Event::StopRequested { force: false },
        Event::TerminateRequested,
        Event::GuestPoweredOff {
            behavior: ShutdownBehavior::Stop,
        },
        Event::StopRequested { force: true },
    ];
    let handles: Vec<_> = events
        .into_iter()
        .map(|event| {
            let db = Arc::clone(&db);
            let id = id.clone();
            std::thread::spawn(move || {
                let t = state::transition(&id, InstanceState::Running, &event, at(2))
                    .expect("legal from running");
                db.update_instance_state(&id, &t, at(2))
            })
        })
        .collect();
    let results: Vec<_> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let winners = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "{results:?}");
    assert!(results
        .iter()
        .filter_map(|r| r.as_ref().err())
        .all(|e| matches!(e, DbError::StateConflict { .. })));
}

#[test]
fn lifecycle_records_reasons_vmm_and_times() {
    let (_dir, db) = temp_db();
    let r = reservation(1, None, at(0));
    db.insert_reservation_with_instances(&r).expect("insert");
    let id = &r.instances[0].id;
    apply(&db, id, Event::VmmStarted, at(1)).expect("boot");
    let vmm = VmmHandle {
        pid: 77,
        api_sock: PathBuf::from("/run/x.sock"),
        serial_log: PathBuf::from("/run/x.log"),
    };
    db.set_vmm(id, Some(&vmm)).expect("set vmm");
    assert_eq!(db.get_instance(id).expect("get").vmm, Some(vmm));

    let stopping = apply(&db, id, Event::StopRequested { force: false }, at(60)).expect("stop");
    assert_eq!(stopping.state, InstanceState::Stopping);
    assert_eq!(
        stopping.state_reason,
        Some(StateReason::user_initiated_shutdown())
    );
    assert_eq!(
        stopping.state_transition_reason,
        "User initiated (2026-11-26 23:01:00 GMT)"
    );
    assert!(stopping.vmm.is_some(), "the VMM is still shutting down");

    let stopped = apply(
        &db,
        id,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
        at(61),
    )
    .expect("exited");
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert_eq!(stopped.vmm, None, "a stopped instance has no VMM");
    assert_eq!(stopped, db.get_instance(id).expect("get"));

    let started = apply(&db, id, Event::StartRequested, at(120)).expect("start");
    assert_eq!(started.state, InstanceState::Pending);
    assert_eq!(started.launch_time, at(120), "start resets launchTime");
    assert_eq!(started.state_transition_reason, "");

    apply(&db, id, Event::TerminateRequested, at(130)).expect("terminate");
    let gone = apply(
        &db,
        id,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
        at(131),
    )
    .expect("exited");
    assert_eq!(gone.state, InstanceState::Terminated);
    assert_eq!(gone.terminated_at, Some(at(131)));
}

#[test]
fn type_and_user_data_change_only_while_stopped() {
    let (_dir, db) = temp_db();
    let r = reservation(1, None, at(0));
    db.insert_reservation_with_instances(&r).expect("insert");
    let id = &r.instances[0].id;
    apply(&db, id, Event::VmmStarted, at(1)).expect("boot");

    match db.set_instance_type(id, "t3.large") {
        Err(e @ DbError::IncorrectState { .. }) => assert_eq!(
            e.to_string(),
            format!("The instance '{id}' is not in the 'stopped' state.")
        ),
        other => panic!("expected IncorrectState, got {other:?}"),
    }
    assert!(matches!(
        db.set_user_data(id, Some(b"x")),
        Err(DbError::IncorrectState { .. })
    ));
    db.set_disable_api_termination(id, true).expect("any state");
    db.set_shutdown_behavior(id, ShutdownBehavior::Terminate)
        .expect("any state");

    apply(&db, id, Event::StopRequested { force: true }, at(2)).expect("stop");
    apply(
        &db,
        id,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
        at(3),
    )
    .expect("stopped");
    db.set_instance_type(id, "t3.large").expect("stopped");
    db.set_user_data(id, Some(&[0, 1, 2, 255]))
        .expect("stopped");
    let i = db.get_instance(id).expect("get");
    assert_eq!(i.instance_type, "t3.large");
    assert_eq!(i.user_data.as_deref(), Some(&[0u8, 1, 2, 255][..]));
    assert!(i.disable_api_termination);
    assert_eq!(i.shutdown_behavior, ShutdownBehavior::Terminate);

    assert!(matches!(
        db.set_instance_type("i-0123456789abcdef0", "t3.large"),
        Err(DbError::NotFound { .. })
    ));
    assert!(matches!(
        db.set_disable_api_termination("i-0123456789abcdef0", true),
        Err(DbError::NotFound { .. })
    ));
}

#[test]
fn terminated_instances_are_collected_after_an_hour() {
    let (_dir, db) = temp_db();
    let r = reservation(2, Some("tok"), at(0));
    db.insert_reservation_with_instances(&r).expect("insert");
    let (a, b) = (&r.instances[0].id, &r.instances[1].id);
    db.create_tags(std::slice::from_ref(a), &[("k".into(), "v".into())])
        .expect("tag");
    for id in [a, b] {
        apply(&db, id, Event::TerminateRequested, at(10)).expect("terminate");
    }
    apply(
        &db,
        a,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
        at(11),
    )
    .expect("terminated");

    let just_before = at(11) + TERMINATED_RETENTION;
    assert!(db.collect_terminated(just_before).expect("gc").is_empty());
    let after = at(12) + TERMINATED_RETENTION;
    assert_eq!(db.collect_terminated(after).expect("gc"), vec![a.clone()]);
    assert!(matches!(db.get_instance(a), Err(DbError::NotFound { .. })));
    assert!(db.tags_of(a).expect("tags").is_empty());
    // b is still shutting down, so the reservation and its token stay.
    assert!(db
        .find_reservation_by_client_token("tok")
        .expect("lookup")
        .is_some());

    apply(
        &db,
        b,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
        at(20),
    )
    .expect("terminated");
    // The Collected event deletes through the state machine too.
    let collected = apply(&db, b, Event::Collected, at(20) + TERMINATED_RETENTION).expect("gc b");
    assert_eq!(collected.state, InstanceState::Terminated);
    assert!(matches!(db.get_instance(b), Err(DbError::NotFound { .. })));
    assert!(db
        .find_reservation_by_client_token("tok")
        .expect("lookup")
        .is_none());
}

#[test]
fn filters_select_by_state_type_and_tags() {
    let (_dir, db) = temp_db();
    let r = reservation(4, None, at(0));
    db.insert_reservation_with_instances(&r).expect("insert");
    let ids: Vec<String> = r.instances.iter().map(|i| i.id.clone()).collect();
    db.create_tags(&ids[0..2], &[("Name".into(), "web-01".into())])
        .expect("tag");
    db.create_tags(&ids[2..3], &[("Name".into(), "db-01".into())])
        .expect("tag");
    db.create_tags(&ids[3..4], &[("role".into(), "Web".into())])
        .expect("tag");
    apply(&db, &ids[0], Event::VmmStarted, at(1)).expect("boot");
    db.set_vmm(&ids[0], None).expect("vmm");

    let names = |filters: Vec<Filter>| -> Vec<String> {
        db.list_instances(&query(filters))
            .expect("list")
            .items
            .into_iter()
            .map(|i| i.id)
            .collect()
    };
    assert_eq!(names(vec![Filter::new("tag:Name", &["web-*"])]), ids[0..2]);
    assert_eq!(names(vec![Filter::new("tag:Name", &["?????"])]), ids[2..3]);
    assert_eq!(
        names(vec![Filter::new("tag:Name", &["web-01", "db-01"])]),
        ids[0..3]
    );
    assert_eq!(
        names(vec![Filter::new("tag-value", &["web*"])]),
        ids[0..2],
        "case-sensitive"
    );
    assert_eq!(names(vec![Filter::new("tag-key", &["role"])]), ids[3..4]);
    assert_eq!(
        names(vec![Filter::new("instance-state-name", &["running"])]),
        ids[0..1]
    );
    assert_eq!(
        names(vec![
            Filter::new("instance-state-code", &["0"]),
            Filter::new("tag:Name", &["web-*"])
        ]),
        ids[1..2],
        "filters are AND'ed"
    );
    assert_eq!(
        names(vec![Filter::new("instance-type", &["lab.micro"])]).len(),
        4
    );
    assert_eq!(
        names(vec![Filter::new("launch-time", &["2026-11-26T*"])]).len(),
        4
    );
    assert!(names(vec![Filter::new("key-name", &["other"])]).is_empty());

    match db.list_instances(&query(vec![Filter::new("colour", &["red"])])) {
        Err(DbError::InvalidQuery(e @ FilterError::UnknownFilter(_))) => {
            assert_eq!(e.to_string(), "The filter 'colour' is invalid")
        }
        other => panic!("expected an unknown filter error, got {other:?}"),
    }
}

#[test]
fn explicit_ids_must_all_exist() {
    let (_dir, db) = temp_db();
    let r = reservation(2, None, at(0));
    db.insert_reservation_with_instances(&r).expect("insert");
    let q = InstanceQuery {
        instance_ids: vec![r.instances[1].id.clone()],
        ..InstanceQuery::default()
    };
    let page = db.list_instances(&q).expect("list");
    assert_eq!(page.items.len(), 1);
    assert_eq!(page.items[0].id, r.instances[1].id);

    let q = InstanceQuery {
        instance_ids: vec![
            r.instances[0].id.clone(),
            "i-0000000000000000a".into(),
            "i-0000000000000000b".into(),
        ],
        ..InstanceQuery::default()
    };
    match db.list_instances(&q) {
        Err(DbError::NotFound { ids, .. }) => assert_eq!(
            ids,
            vec![
                "i-0000000000000000a".to_string(),
                "i-0000000000000000b".to_string()
            ]
        ),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

fn walk(db: &ec2lab_control::db::Db, filters: Vec<Filter>, size: i64) -> (Vec<String>, usize) {
    let mut q = InstanceQuery {
        filters,
        page: PageRequest {
            max_results: Some(size),
            next_token: None,
        },
        ..InstanceQuery::default()
    };
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let page = db.list_instances(&q).expect("page");
        pages += 1;
        assert!(page.items.len() <= size as usize);
        seen.extend(page.items.into_iter().map(|i| i.id));
        match page.next_token {
            Some(t) => q.page.next_token = Some(t),
            None => return (seen, pages),
        }
    }
}

#[test]
fn a_thousand_instances_page_completely_and_in_order() {
    let (_dir, db) = temp_db();
    let ids = db.bulk_insert_for_bench(1000, at(0)).expect("bulk");
    assert_eq!(ids.len(), 1000);
    assert_eq!(ids.iter().collect::<HashSet<_>>().len(), 1000);

    let all = db.all_instances().expect("all");
    assert_eq!(
        all.iter().map(|i| &i.id).collect::<Vec<_>>(),
        ids.iter().collect::<Vec<_>>()
    );

    let (seen, pages) = walk(&db, vec![], 37);
    assert_eq!(seen, ids);
    assert_eq!(pages, 1000usize.div_ceil(37));

    let (even, _) = walk(&db, vec![Filter::new("tag:parity", &["even"])], 5);
    assert_eq!(even.len(), 500);
    assert_eq!(
        even,
        ids.iter().step_by(2).cloned().collect::<Vec<_>>(),
        "filtering happens before paging"
    );

    let q = query(vec![Filter::new("tag:Name", &["bench-0099?"])]);
    assert_eq!(db.list_instances(&q).expect("list").items.len(), 10);

    let (whole, pages) = walk(&db, vec![], 1000);
    assert_eq!((whole.len(), pages), (1000, 1));
}

#[test]
fn paging_survives_the_last_item_being_deleted() {
    let (_dir, db) = temp_db();
    let ids = db.bulk_insert_for_bench(12, at(0)).expect("bulk");
    let mut q = InstanceQuery {
        page: PageRequest {
            max_results: Some(5),
            next_token: None,
        },
        ..InstanceQuery::default()
    };
    let first = db.list_instances(&q).expect("page 1");
    let last = first.items.last().expect("five items");
    // Terminate and collect the instance the token points at.
    for event in [
        Event::TerminateRequested,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
        Event::Collected,
    ] {
        apply(&db, &last.id, event, at(10)).expect("transition");
    }
    q.page.next_token = first.next_token;
    let second = db.list_instances(&q).expect("page 2");
    assert_eq!(
        second
            .items
            .iter()
            .map(|i| i.id.clone())
            .collect::<Vec<_>>(),
        ids[5..10]
    );
}

#[test]
fn bad_page_parameters_get_ec2_errors() {
    let (_dir, db) = temp_db();
    db.bulk_insert_for_bench(3, at(0)).expect("bulk");
    for bad in [0, 4, 1001, -5] {
        let q = InstanceQuery {
            page: PageRequest {
                max_results: Some(bad),
                next_token: None,
            },
            ..InstanceQuery::default()
        };
        match db.list_instances(&q) {
            Err(DbError::InvalidQuery(e)) => assert_eq!(e.code(), "InvalidParameterValue"),
            other => panic!("MaxResults {bad}: {other:?}"),
        }
    }
    for token in ["garbage!", "djE6bm9zbGFzaA", ""] {
        let q = InstanceQuery {
            page: PageRequest {
                max_results: Some(5),
                next_token: Some(token.to_string()),
            },
            ..InstanceQuery::default()
        };
        match db.list_instances(&q) {
            Err(DbError::InvalidQuery(e)) => assert_eq!(e.code(), "InvalidPaginationToken"),
            other => panic!("token {token:?}: {other:?}"),
        }
    }
}

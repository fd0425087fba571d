//! The lab's instance rules on a lab that starts no guest: instances are
//! put in the state a rule needs straight through the repository, then the
//! operation is asked of the lab as a handler would.

mod db_support;

use std::path::Path;
use std::sync::Arc;

use db_support::{at, reservation};
use ec2lab_control::db::{Db, InsertOutcome};
use ec2lab_control::instances::InstanceError;
use ec2lab_control::lifecycle::{HealthChecks, Lab};
use ec2lab_control::model::status::DEFAULT_CHECKIN_TIMEOUT;
use ec2lab_control::model::InstanceState;
use ec2lab_control::supervisor::Supervisor;

/// A lab over `db` whose VMM binary does not exist, with one running
/// instance whose stop protection is `protected`.
fn lab_with_running_instance(
    runtime: &tokio::runtime::Runtime,
    protected: bool,
) -> (Arc<Lab>, String) {
    let db = Db::open_in_memory().expect("db");
    let mut r = reservation(1, None, at(0));
    r.instances[0].state = InstanceState::Running;
    r.instances[0].disable_api_stop = protected;
    let id = r.instances[0].id.clone();
    assert_eq!(
        db.insert_reservation_with_instances(&r).expect("insert"),
        InsertOutcome::Created
    );
    let nowhere = Path::new("/nonexistent");
    let lab = Lab::new(
        db,
        Supervisor::new(nowhere.join("vmm"), nowhere.join("instances")),
        nowhere.join("images"),
        runtime.handle().clone(),
        HealthChecks {
            checkin_timeout: DEFAULT_CHECKIN_TIMEOUT,
            stall_timeout: None,
        },
    );
    (lab, id)
}

#[test]
fn a_stop_protected_instance_refuses_stop_until_the_protection_is_lifted() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (lab, id) = lab_with_running_instance(&runtime, true);
    let ids = vec![id.clone()];
    for force in [false, true] {
        match lab.stop(&ids, force, false) {
            Err(e @ InstanceError::StopProtected(_)) => assert_eq!(
                e.to_string(),
                format!(
                    "The instance '{id}' may not be stopped. Modify its 'disableApiStop' \
                     instance attribute and try again."
                )
            ),
            other => panic!("force={force}: {other:?}"),
        }
    }
    assert_eq!(
        lab.db.get_instance(&id).expect("get").state,
        InstanceState::Running
    );
    lab.db.set_disable_api_stop(&id, false).expect("lift");
    let changes = lab.stop(&ids, false, false).expect("stop");
    assert_eq!(changes[0].current, InstanceState::Stopping);
}

#[test]
fn stop_protection_does_not_prevent_termination() {
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (lab, id) = lab_with_running_instance(&runtime, true);
    let changes = lab.terminate(&[id]).expect("terminate");
    assert_eq!(changes[0].current, InstanceState::ShuttingDown);
}

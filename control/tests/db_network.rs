//! The default VPC and address allocation in a real SQLite file: the
//! layout AWS gives every account, lowest-free and requested addresses,
//! reserved and taken ones, exhaustion, release on termination, and the
//! VPC filters.

mod db_support;

use std::collections::HashSet;
use std::net::Ipv4Addr;

use db_support::{at, reservation, temp_db};
use ec2lab_control::db::{Db, DbError, InsertOutcome, InstanceQuery, NetworkQuery};
use ec2lab_control::model::filter::Filter;
use ec2lab_control::model::ids::{self, IdKind};
use ec2lab_control::model::state::{self, Event, VmmExit};
use ec2lab_control::model::vpc::{InterfaceRequest, Subnet};
use ec2lab_control::model::{Instance, InstanceState};

fn apply(db: &Db, id: &str, event: Event) -> Instance {
    let current = db.get_instance(id).expect("instance");
    let t = state::transition(id, current.state, &event, at(5)).expect("legal transition");
    db.update_instance_state(id, &t, at(5)).expect("update")
}

fn subnet_in(db: &Db, zone: &str) -> Subnet {
    db.default_subnet_for_zone(zone)
        .expect("query")
        .expect("a default subnet in every zone")
}

fn request(subnet: &Subnet, ip: Option<&str>) -> InterfaceRequest {
    InterfaceRequest {
        tags: Vec::new(),
        subnet_id: subnet.id.clone(),
        private_ip: ip.map(|ip| ip.parse().expect("ip")),
        group_ids: Vec::new(),
        group_names: Vec::new(),
        delete_on_termination: true,
        description: String::new(),
        associate_public_ip: None,
    }
}

/// Launches `count` instances with `interface`; the error if it fails.
fn launch(db: &Db, count: u32, interface: &InterfaceRequest) -> Result<Vec<Instance>, DbError> {
    let mut r = reservation(count, None, at(0));
    assert_eq!(
        db.insert_reservation(&mut r, Some(interface))?,
        InsertOutcome::Created
    );
    Ok(r.instances)
}

fn ip_of(i: &Instance) -> Ipv4Addr {
    i.primary_interface()
        .expect("a primary interface")
        .private_ip_address
}

fn everything() -> NetworkQuery {
    NetworkQuery::default()
}

#[test]
fn the_default_vpc_is_awss_and_created_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("ec2lab.db");
    let first = Db::open(&path).expect("open").list_vpcs(&everything());
    let again = Db::open(&path).expect("reopen");
    let vpcs = again.list_vpcs(&everything()).expect("vpcs").items;
    assert_eq!(
        vpcs,
        first.expect("vpcs").items,
        "reopening creates nothing"
    );
    assert_eq!(vpcs.len(), 1);
    let vpc = &vpcs[0];
    assert!(vpc.is_default);
    assert_eq!(vpc.cidr_block, "172.31.0.0/16");
    assert!(ids::is_valid(IdKind::Vpc, &vpc.id), "{}", vpc.id);

    let subnets = again.list_subnets(&everything()).expect("subnets").items;
    let mut layout: Vec<(String, String, String, bool, bool, u64)> = subnets
        .iter()
        .map(|s| {
            assert!(ids::is_valid(IdKind::Subnet, &s.id), "{}", s.id);
            assert_eq!(s.vpc_id, vpc.id);
            (
                s.availability_zone.clone(),
                s.availability_zone_id.clone(),
                s.cidr_block.clone(),
                s.default_for_az,
                s.map_public_ip_on_launch,
                s.available_ip_address_count,
            )
        })
        .collect();
    layout.sort();
    let row = |zone: &str, id: &str, cidr: &str| {
        (
            zone.to_string(),
            id.to_string(),
            cidr.to_string(),
            true,
            true,
            4091,
        )
    };
    assert_eq!(
        layout,
        [
            row("us-east-1a", "use1-az1", "172.31.0.0/20"),
            row("us-east-1b", "use1-az2", "172.31.16.0/20"),
            row("us-east-1c", "use1-az3", "172.31.32.0/20"),
        ]
    );

    let groups = again
        .list_security_groups(&everything(), &[])
        .expect("groups")
        .items;
    assert_eq!(groups.len(), 1);
    assert_eq!(groups[0].name, "default");
    assert_eq!(groups[0].description, "default VPC security group");
    assert_eq!(groups[0].vpc_id, vpc.id);
    assert!(ids::is_valid(IdKind::SecurityGroup, &groups[0].id));
}

#[test]
fn launches_take_the_lowest_free_addresses_after_the_four_reserved() {
    let (_dir, db) = temp_db();
    let a = subnet_in(&db, "us-east-1a");
    let instances = launch(&db, 3, &request(&a, None)).expect("launch");
    let ips: Vec<String> = instances.iter().map(|i| ip_of(i).to_string()).collect();
    assert_eq!(ips, ["172.31.0.4", "172.31.0.5", "172.31.0.6"]);

    let macs: HashSet<&str> = instances
        .iter()
        .map(|i| i.network_interfaces[0].mac_address.as_str())
        .collect();
    assert_eq!(macs.len(), 3, "MACs are unique: {macs:?}");
    for i in &instances {
        let eni = &i.network_interfaces[0];
        assert!(eni.mac_address.starts_with("02:"), "{}", eni.mac_address);
        assert!(ids::is_valid(IdKind::NetworkInterface, &eni.id));
        assert_eq!(eni.subnet_id, a.id);
        assert_eq!(eni.availability_zone, "us-east-1a");
        assert_eq!(eni.groups.len(), 1, "the default group");
        assert_eq!(eni.groups[0].group_name, "default");
        let attachment = eni.attachment.as_ref().expect("attached");
        assert_eq!(attachment.instance_id, i.id);
        assert_eq!(attachment.device_index, 0);
        assert!(attachment.delete_on_termination);
        // What the launch returned is what a read returns.
        assert_eq!(db.get_instance(&i.id).expect("read"), *i);
    }
    assert_eq!(
        subnet_in(&db, "us-east-1a").available_ip_address_count,
        4088
    );
    assert_eq!(
        subnet_in(&db, "us-east-1b").available_ip_address_count,
        4091
    );
}

#[test]
fn a_requested_address_is_given_once_and_reserved_or_foreign_ones_never() {
    let (_dir, db) = temp_db();
    let b = subnet_in(&db, "us-east-1b");
    let got = launch(&db, 1, &request(&b, Some("172.31.20.7"))).expect("free address");
    assert_eq!(ip_of(&got[0]), Ipv4Addr::new(172, 31, 20, 7));

    let cases = [
        ("172.31.20.7", "InvalidIPAddress.InUse"),
        ("172.31.16.0", "InvalidParameterValue"),
        ("172.31.16.3", "InvalidParameterValue"),
        ("172.31.31.255", "InvalidParameterValue"),
        ("172.31.0.9", "InvalidParameterValue"),
    ];
    for (ip, code) in cases {
        let before = db.all_instances().expect("all").len();
        match launch(&db, 1, &request(&b, Some(ip))) {
            Err(DbError::Ipam(e)) => assert_eq!(e.code(), code, "{ip}: {e}"),
            other => panic!("{ip}: {other:?}"),
        }
        assert_eq!(
            db.all_instances().expect("all").len(),
            before,
            "a refused launch stores nothing"
        );
    }
    // The next free address skips the one taken by request.
    let next = launch(&db, 1, &request(&b, None)).expect("launch");
    assert_eq!(ip_of(&next[0]), Ipv4Addr::new(172, 31, 16, 4));
}

#[test]
fn unknown_security_groups_refuse_the_launch() {
    let (_dir, db) = temp_db();
    let a = subnet_in(&db, "us-east-1a");
    let mut req = request(&a, None);
    req.group_names = vec!["web".to_string()];
    match launch(&db, 1, &req) {
        Err(DbError::NotFound { kind, ids }) => {
            assert_eq!(kind, IdKind::SecurityGroup);
            assert_eq!(ids, ["web"]);
        }
        other => panic!("{other:?}"),
    }
    let mut req = request(&a, None);
    req.group_ids = vec![ids::generate(IdKind::SecurityGroup)];
    assert!(matches!(
        launch(&db, 1, &req),
        Err(DbError::NotFound {
            kind: IdKind::SecurityGroup,
            ..
        })
    ));
    assert!(db.all_instances().expect("all").is_empty());
}

#[test]
fn a_full_subnet_refuses_the_whole_reservation() {
    let (_dir, db) = temp_db();
    let c = subnet_in(&db, "us-east-1c");
    // 4091 assignable addresses: 4000 fit, the next 100 do not.
    for _ in 0..8 {
        launch(&db, 500, &request(&c, None)).expect("fits");
    }
    match launch(&db, 100, &request(&c, None)) {
        Err(DbError::Ipam(e)) => assert_eq!(e.code(), "InsufficientFreeAddressesInSubnet"),
        other => panic!("{:?}", other.map(|v| v.len())),
    }
    assert_eq!(db.all_instances().expect("all").len(), 4000);
    assert_eq!(subnet_in(&db, "us-east-1c").available_ip_address_count, 91);
    let last = launch(&db, 91, &request(&c, None)).expect("the rest fit");
    assert_eq!(ip_of(&last[90]), Ipv4Addr::new(172, 31, 47, 254));
    assert_eq!(subnet_in(&db, "us-east-1c").available_ip_address_count, 0);
}

#[test]
fn stopping_keeps_the_address_and_termination_frees_it() {
    let (_dir, db) = temp_db();
    let a = subnet_in(&db, "us-east-1a");
    let first = launch(&db, 1, &request(&a, None))
        .expect("launch")
        .remove(0);
    let ip = ip_of(&first);
    apply(&db, &first.id, Event::VmmStarted);
    apply(&db, &first.id, Event::StopRequested { force: false });
    let stopped = apply(
        &db,
        &first.id,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
    );
    assert_eq!(stopped.state, InstanceState::Stopped);
    assert_eq!(ip_of(&stopped), ip, "a stopped instance keeps its address");
    assert_eq!(
        db.get_instance(&first.id).expect("read").network_interfaces,
        first.network_interfaces
    );

    let shutting_down = apply(&db, &first.id, Event::TerminateRequested);
    assert_eq!(ip_of(&shutting_down), ip, "held until the instance is gone");
    let terminated = apply(
        &db,
        &first.id,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
    );
    assert_eq!(terminated.state, InstanceState::Terminated);
    assert!(terminated.network_interfaces.is_empty());
    assert!(db
        .get_instance(&first.id)
        .expect("still listed")
        .network_interfaces
        .is_empty());
    assert!(db
        .list_network_interfaces(&everything())
        .expect("enis")
        .items
        .is_empty());
    let again = launch(&db, 1, &request(&a, Some(&ip.to_string()))).expect("reusable");
    assert_eq!(ip_of(&again[0]), ip);
}

#[test]
fn an_interface_kept_on_termination_is_detached_and_keeps_its_address() {
    let (_dir, db) = temp_db();
    let a = subnet_in(&db, "us-east-1a");
    let mut req = request(&a, None);
    req.delete_on_termination = false;
    let i = launch(&db, 1, &req).expect("launch").remove(0);
    apply(&db, &i.id, Event::TerminateRequested);
    apply(
        &db,
        &i.id,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
    );
    let enis = db
        .list_network_interfaces(&everything())
        .expect("enis")
        .items;
    assert_eq!(enis.len(), 1);
    assert_eq!(enis[0].status(), "available");
    assert!(enis[0].attachment.is_none());
    let err = launch(&db, 1, &request(&a, Some(&ip_of(&i).to_string()))).expect_err("kept");
    assert!(matches!(err, DbError::Ipam(_)), "{err:?}");
}

#[test]
fn vpc_filters_select_what_ec2_would() {
    let (_dir, db) = temp_db();
    let a = subnet_in(&db, "us-east-1a");
    let b = subnet_in(&db, "us-east-1b");
    let in_a = launch(&db, 1, &request(&a, None)).expect("a").remove(0);
    let in_b = launch(&db, 1, &request(&b, Some("172.31.16.99")))
        .expect("b")
        .remove(0);
    let q = |name: &str, values: &[&str]| NetworkQuery {
        filters: vec![Filter::new(name, values)],
        ..NetworkQuery::default()
    };

    assert_eq!(
        db.list_vpcs(&q("isDefault", &["true"]))
            .expect("vpcs")
            .items
            .len(),
        1
    );
    assert_eq!(
        db.list_vpcs(&q("is-default", &["false"]))
            .expect("vpcs")
            .items
            .len(),
        0
    );
    assert_eq!(
        db.list_vpcs(&q("cidr", &["172.31.*"]))
            .expect("vpcs")
            .items
            .len(),
        1
    );

    let zones = |query: &NetworkQuery| -> Vec<String> {
        db.list_subnets(query)
            .expect("subnets")
            .items
            .into_iter()
            .map(|s| s.availability_zone)
            .collect()
    };
    assert_eq!(
        zones(&q("availability-zone", &["us-east-1b"])),
        ["us-east-1b"]
    );
    assert_eq!(
        zones(&q("availability-zone-id", &["use1-az3"])),
        ["us-east-1c"]
    );
    assert_eq!(zones(&q("defaultForAz", &["true"])).len(), 3);
    assert_eq!(zones(&q("default-for-az", &["false"])).len(), 0);
    assert_eq!(zones(&q("cidr-block", &["172.31.32.0/20"])), ["us-east-1c"]);
    assert_eq!(
        zones(&q("available-ip-address-count", &["4090"])).len(),
        2,
        "one address taken in a and in b"
    );
    let err = db
        .list_subnets(&q("colour", &["red"]))
        .expect_err("unknown filter");
    assert!(matches!(err, DbError::InvalidQuery(_)), "{err:?}");

    let eni_ids = |query: &NetworkQuery| -> Vec<String> {
        db.list_network_interfaces(query)
            .expect("enis")
            .items
            .into_iter()
            .map(|n| n.id)
            .collect()
    };
    let eni_b = in_b.network_interfaces[0].id.clone();
    assert_eq!(
        eni_ids(&q("attachment.instance-id", &[in_b.id.as_str()])),
        vec![eni_b.clone()]
    );
    assert_eq!(
        eni_ids(&q("private-ip-address", &["172.31.16.99"])),
        vec![eni_b.clone()]
    );
    assert_eq!(eni_ids(&q("subnet-id", &[a.id.as_str()])).len(), 1);
    let mac = in_a.network_interfaces[0].mac_address.clone();
    assert_eq!(
        eni_ids(&q("mac-address", &[mac.as_str()])),
        [in_a.network_interfaces[0].id.clone()]
    );
    let explicit = NetworkQuery {
        ids: vec![ids::generate(IdKind::NetworkInterface)],
        ..NetworkQuery::default()
    };
    assert!(matches!(
        db.list_network_interfaces(&explicit),
        Err(DbError::NotFound {
            kind: IdKind::NetworkInterface,
            ..
        })
    ));

    let instances = |filter: Filter| -> Vec<String> {
        db.list_instances(&InstanceQuery {
            filters: vec![filter],
            ..InstanceQuery::default()
        })
        .expect("instances")
        .items
        .into_iter()
        .map(|i| i.id)
        .collect()
    };
    assert_eq!(
        instances(Filter::new("subnet-id", &[b.id.as_str()])),
        vec![in_b.id.clone()]
    );
    assert_eq!(
        instances(Filter::new("private-ip-address", &["172.31.0.4"])),
        vec![in_a.id.clone()]
    );
    assert_eq!(
        instances(Filter::new("vpc-id", &[a.vpc_id.as_str()])).len(),
        2
    );
    assert_eq!(
        instances(Filter::new(
            "network-interface.network-interface-id",
            &[eni_b.as_str()]
        )),
        vec![in_b.id.clone()]
    );
    assert_eq!(
        instances(Filter::new("instance.group-name", &["default"])).len(),
        2
    );

    let named = db
        .list_security_groups(&everything(), &["nope".to_string()])
        .expect_err("unknown name");
    assert!(matches!(
        named,
        DbError::NotFound {
            kind: IdKind::SecurityGroup,
            ..
        }
    ));
}

#[test]
fn tags_reach_the_vpc_resources() {
    let (_dir, db) = temp_db();
    let a = subnet_in(&db, "us-east-1a");
    let i = launch(&db, 1, &request(&a, None))
        .expect("launch")
        .remove(0);
    let eni = i.network_interfaces[0].id.clone();
    let ids = vec![a.id.clone(), a.vpc_id.clone(), eni.clone()];
    db.create_tags(&ids, &[("Name".to_string(), "lab".to_string())])
        .expect("tags");
    let tagged = NetworkQuery {
        filters: vec![Filter::new("tag:Name", &["lab"])],
        ..NetworkQuery::default()
    };
    assert_eq!(db.list_subnets(&tagged).expect("subnets").items.len(), 1);
    assert_eq!(db.list_vpcs(&tagged).expect("vpcs").items.len(), 1);
    assert_eq!(
        db.list_network_interfaces(&tagged).expect("enis").items[0].id,
        eni
    );
    let missing = ids::generate(IdKind::Subnet);
    assert!(matches!(
        db.create_tags(&[missing], &[("k".to_string(), "v".to_string())]),
        Err(DbError::NotFound {
            kind: IdKind::Subnet,
            ..
        })
    ));
}

fn public_of(db: &Db, i: &Instance) -> Option<Ipv4Addr> {
    db.get_instance(&i.id)
        .expect("instance")
        .primary_interface()
        .expect("a primary interface")
        .public_ip
}

#[test]
fn public_addresses_come_from_the_pool_change_across_stop_and_run_out_cleanly() {
    use ec2lab_control::model::vpc::{Cidr, IpamError};
    let (_dir, db) = temp_db();
    let subnet = subnet_in(&db, "us-east-1a");
    let pool = Cidr::parse("198.51.100.0/29").expect("pool");
    // The default subnet maps public addresses; an explicit `false` wins.
    let mapped = launch(&db, 2, &request(&subnet, None)).expect("launch");
    let opted_out = launch(
        &db,
        1,
        &InterfaceRequest {
            associate_public_ip: Some(false),
            ..request(&subnet, None)
        },
    )
    .expect("launch")
    .remove(0);
    for i in &mapped {
        db.assign_public_ips(&i.id, pool).expect("assign");
        // Assigning again keeps what it has.
        db.assign_public_ips(&i.id, pool).expect("assign again");
    }
    db.assign_public_ips(&opted_out.id, pool).expect("assign");
    let first = public_of(&db, &mapped[0]).expect("a public address");
    let second = public_of(&db, &mapped[1]).expect("a public address");
    // Not the network address, nor the gateway (.1).
    assert_eq!(
        (first, second),
        (
            "198.51.100.2".parse().expect("ip"),
            "198.51.100.3".parse().expect("ip")
        )
    );
    assert_eq!(public_of(&db, &opted_out), None);

    // Stop and start: released, then a different one.
    db.release_public_ips(&mapped[0].id).expect("release");
    assert_eq!(public_of(&db, &mapped[0]), None);
    db.assign_public_ips(&mapped[0].id, pool)
        .expect("assign after start");
    let after = public_of(&db, &mapped[0]).expect("a public address");
    assert_ne!(after, first, "the same address came back after stop/start");

    // A /29 gives .2 to .6 (two held): fill it, then the next one is
    // refused whole.
    let more = launch(&db, 4, &request(&subnet, None)).expect("launch");
    for i in &more[..3] {
        db.assign_public_ips(&i.id, pool).expect("assign");
    }
    match db.assign_public_ips(&more[3].id, pool) {
        Err(DbError::Ipam(IpamError::PublicPoolExhausted { .. })) => {}
        other => panic!("expected an exhausted pool, got {other:?}"),
    }
    assert_eq!(public_of(&db, &more[3]), None, "half an assignment");
}

#[test]
fn an_elastic_ip_moves_only_when_reassociation_is_allowed_and_survives_stop() {
    use ec2lab_control::db::{AddressRef, AssociationTarget};
    use ec2lab_control::model::address::AddressError;
    use ec2lab_control::model::vpc::Cidr;
    let (_dir, db) = temp_db();
    let subnet = subnet_in(&db, "us-east-1a");
    let pool = Cidr::parse("198.51.100.0/24").expect("pool");
    let both = launch(&db, 2, &request(&subnet, None)).expect("launch");
    for i in &both {
        db.assign_public_ips(&i.id, pool).expect("assign");
    }
    let eip = db
        .allocate_address(pool, &Default::default())
        .expect("allocate");
    // The pool skips what instances hold.
    assert_eq!(
        eip.public_ip,
        "198.51.100.4".parse::<Ipv4Addr>().expect("ip")
    );
    let by_id = AddressRef::Id(eip.allocation_id.clone());
    let to = |i: &Instance| AssociationTarget::Instance(i.id.clone());

    let first = db
        .associate_address(&by_id, &to(&both[0]), false)
        .expect("associate");
    assert_eq!(first.moved_from, None);
    assert_eq!(public_of(&db, &both[0]), Some(eip.public_ip));
    // Again to the same interface: the same association, as in EC2.
    let again = db
        .associate_address(&by_id, &to(&both[0]), false)
        .expect("associate again");
    assert_eq!(again.association_id, first.association_id);

    match db.associate_address(&by_id, &to(&both[1]), false) {
        Err(DbError::Address(AddressError::AlreadyAssociated { .. })) => {}
        other => panic!("expected Resource.AlreadyAssociated, got {other:?}"),
    }
    match db.release_address(&by_id) {
        Err(DbError::Address(AddressError::InUse(_))) => {}
        other => panic!("expected InvalidIPAddress.InUse, got {other:?}"),
    }
    // Stop keeps the Elastic IP.
    db.release_public_ips(&both[0].id).expect("stop");
    assert_eq!(public_of(&db, &both[0]), Some(eip.public_ip));

    let moved = db
        .associate_address(&by_id, &to(&both[1]), true)
        .expect("reassociate");
    let a_eni = both[0].primary_interface().expect("eni").id.clone();
    assert_eq!(moved.moved_from, Some(a_eni));
    assert_eq!(public_of(&db, &both[0]), None);
    assert_eq!(public_of(&db, &both[1]), Some(eip.public_ip));
    let listed = db
        .list_addresses(&Default::default())
        .expect("describe")
        .items;
    let association = listed[0].association.as_ref().expect("associated");
    assert_eq!(
        association.instance_id.as_deref(),
        Some(both[1].id.as_str())
    );

    db.disassociate_address(&AddressRef::Id(moved.association_id))
        .expect("disassociate");
    assert_eq!(public_of(&db, &both[1]), None);
    db.release_address(&by_id).expect("release");
    assert!(db
        .list_addresses(&Default::default())
        .expect("describe")
        .items
        .is_empty());
}

#[test]
fn a_terminated_instance_leaves_its_elastic_ip_allocated_and_free() {
    use ec2lab_control::db::{AddressRef, AssociationTarget};
    use ec2lab_control::model::vpc::Cidr;
    let (_dir, db) = temp_db();
    let subnet = subnet_in(&db, "us-east-1a");
    let pool = Cidr::parse("198.51.100.0/24").expect("pool");
    let i = launch(&db, 1, &request(&subnet, None))
        .expect("launch")
        .remove(0);
    let eip = db
        .allocate_address(pool, &Default::default())
        .expect("allocate");
    db.associate_address(
        &AddressRef::Id(eip.allocation_id.clone()),
        &AssociationTarget::Instance(i.id.clone()),
        false,
    )
    .expect("associate");
    // Terminated: its interface (DeleteOnTermination) goes.
    apply(&db, &i.id, Event::TerminateRequested);
    apply(
        &db,
        &i.id,
        Event::VmmExited {
            reason: VmmExit::Clean,
        },
    );
    let left = db
        .list_addresses(&Default::default())
        .expect("describe")
        .items;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].association, None, "{left:?}");
    db.release_address(&AddressRef::Id(eip.allocation_id))
        .expect("release");
}

#[test]
fn the_metadata_document_says_what_describe_instances_says() {
    use ec2lab_control::metadata::document;
    use ec2lab_control::model::vpc::Cidr;
    use ec2lab_control::model::{KeyPair, KeyType, Tags};
    use ec2lab_vmm_api::metadata::HttpTokens;
    let (_dir, db) = temp_db();
    db.insert_key_pair(&KeyPair {
        id: ids::generate(IdKind::KeyPair),
        name: "us-east-kp".into(),
        key_type: KeyType::Ed25519,
        fingerprint: "SHA256:abc".into(),
        public_key: "ssh-ed25519 AAAA us-east-kp".into(),
        created: at(0),
        tags: Tags::new(),
    })
    .expect("key pair");
    let subnet = subnet_in(&db, "us-east-1b");
    let mut r = reservation(1, None, at(0));
    {
        let i = &mut r.instances[0];
        i.user_data = Some(b"#!/bin/sh\necho hi\n".to_vec());
        i.key_name = Some("us-east-kp".into());
        i.tags.insert("Name".into(), "web".into());
        i.placement.availability_zone = "us-east-1b".into();
    }
    db.insert_reservation(&mut r, Some(&request(&subnet, Some("172.31.16.77"))))
        .expect("launch");
    let id = r.instances[0].id.clone();
    db.assign_public_ips(&id, Cidr::parse("198.51.100.0/24").expect("pool"))
        .expect("public address");
    let instance = db.get_instance(&id).expect("instance");
    let eni = instance.primary_interface().expect("eni").clone();
    let doc = document(&db, &instance)
        .expect("document")
        .expect("an instance with an interface has metadata");
    assert_eq!(doc.instance_id, id);
    assert_eq!(doc.local_ipv4, "172.31.16.77");
    assert_eq!(doc.local_hostname, "ip-172-31-16-77.ec2.internal");
    let public = eni.public_ip.expect("a pool address").to_string();
    assert_eq!(doc.public_ipv4.as_deref(), Some(public.as_str()));
    assert_eq!(
        doc.public_hostname,
        Some(format!(
            "ec2-{}.compute-1.amazonaws.com",
            public.replace('.', "-")
        ))
    );
    assert_eq!(doc.mac, eni.mac_address.to_ascii_lowercase());
    assert_eq!(
        (
            doc.availability_zone.as_str(),
            doc.availability_zone_id.as_str()
        ),
        ("us-east-1b", "use1-az2")
    );
    assert_eq!(doc.security_groups, vec!["default".to_string()]);
    assert_eq!(doc.public_keys.len(), 1);
    assert_eq!(doc.public_keys[0].openssh, "ssh-ed25519 AAAA us-east-kp");
    assert_eq!(doc.user_data.as_deref(), Some(&b"#!/bin/sh\necho hi\n"[..]));
    assert_eq!(doc.tags.get("Name").map(String::as_str), Some("web"));
    let nic = &doc.interfaces[0];
    assert_eq!(nic.interface_id, eni.id);
    assert_eq!(nic.subnet_ipv4_cidr_block, subnet.cidr_block);
    assert_eq!(nic.vpc_ipv4_cidr_blocks, vec!["172.31.0.0/16".to_string()]);
    assert_eq!(nic.security_group_ids, vec![eni.groups[0].group_id.clone()]);
    assert_eq!(doc.options.http_tokens, HttpTokens::Optional);
    assert_eq!(doc.options.hop_limit, 1);
    assert!(doc.options.http_endpoint && !doc.options.instance_metadata_tags);
    // Without an interface, nothing could reach the service.
    let mut bare = reservation(1, None, at(0));
    db.insert_reservation(&mut bare, None).expect("launch");
    let bare = db.get_instance(&bare.instances[0].id).expect("instance");
    assert_eq!(document(&db, &bare).expect("document"), None);
}

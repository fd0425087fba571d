//! Responses checked against botocore's EC2 model: every implemented action
//! renders a valid response, and the checker itself rejects what botocore
//! would silently mangle.

mod common;

use ec2lab_control::api::actions::{self, AppState, Ctx, ACTIONS, EC2_OPERATIONS};
use ec2lab_control::api::query::Params;
use ec2lab_control::api::xml::{self, XmlNode};

fn run(action: &str, pairs: &[(&str, &str)]) -> String {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let state = AppState::new("us-east-1", common::guestless_lab(runtime.handle()));
    let ctx = Ctx {
        region: &state.region,
        request_id: "00000000-0000-4000-8000-000000000000",
        state: &state,
        dry_run: false,
    };
    let params = Params::from_pairs(pairs.iter().copied());
    let members = actions::dispatch(&ctx, action, &params)
        .unwrap_or_else(|e| panic!("{action} {pairs:?} failed: {e}"));
    xml::render_response(action, ctx.request_id, &members)
}

#[test]
fn every_action_in_the_table_has_a_case() {
    for (name, _) in ACTIONS {
        assert!(
            common::CASES.iter().any(|(action, _)| action == name)
                || common::SCENARIO_ACTIONS.contains(name)
                || common::SECURITY_GROUP_SCENARIO_ACTIONS.contains(name),
            "{name} is in the action table but has no case in tests/common/mod.rs \
             and is not in the resource scenario"
        );
    }
}

/// A lab over an in-memory-like database in a temporary data directory,
/// with a fake image catalog (files whose sizes match their manifests) and
/// a VMM binary that does not exist, so launches fail fast and the
/// instances end up `stopped` with a Server.InternalError reason: every
/// state a response can show, without KVM.
struct Scenario {
    _dir: tempfile::TempDir,
    _runtime: tokio::runtime::Runtime,
    state: AppState,
    model: ec2lab_control::api::shapes::ServiceModel,
    ran: std::collections::BTreeSet<String>,
}

impl Scenario {
    fn call(&mut self, action: &str, pairs: &[(&str, &str)]) -> String {
        let ctx = Ctx {
            region: &self.state.region,
            request_id: "00000000-0000-4000-8000-000000000000",
            state: &self.state,
            dry_run: false,
        };
        let params = Params::from_pairs(pairs.iter().copied());
        let members = actions::dispatch(&ctx, action, &params)
            .unwrap_or_else(|e| panic!("{action} {pairs:?} failed: {e}"));
        let xml = xml::render_response(action, ctx.request_id, &members);
        if let Err(errors) = self.model.validate_output(action, &xml) {
            panic!("{action} {pairs:?}:\n{}\n{xml}", errors.join("\n"));
        }
        self.ran.insert(action.to_string());
        xml
    }

    /// An action the scenario's state refuses: the refusal is the EC2 one.
    fn refused(&mut self, action: &str, pairs: &[(&str, &str)], code: &str) {
        let ctx = Ctx {
            region: &self.state.region,
            request_id: "00000000-0000-4000-8000-000000000000",
            state: &self.state,
            dry_run: false,
        };
        let params = Params::from_pairs(pairs.iter().copied());
        match actions::dispatch(&ctx, action, &params) {
            Ok(_) => panic!("{action} {pairs:?} succeeded"),
            Err(e) => assert_eq!(e.code(), code, "{action}: {e}"),
        }
        self.ran.insert(action.to_string());
    }
}

fn between<'a>(xml: &'a str, open: &str, close: &str) -> &'a str {
    let start = xml
        .find(open)
        .map(|i| i + open.len())
        .expect("element present");
    let end = xml[start..].find(close).expect("element closed") + start;
    &xml[start..end]
}

#[test]
fn resource_actions_pass_the_botocore_shape_check_through_an_instance_life() {
    let Some(model) = common::model("resource_actions_pass_the_botocore_shape_check") else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    common::fake_catalog(dir.path());
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let db = ec2lab_control::db::Db::open(&dir.path().join("ec2lab.db")).expect("db");
    let supervisor = ec2lab_control::supervisor::Supervisor::new(
        dir.path().join("no-such-vmm"),
        dir.path().join("instances"),
    );
    let lab = ec2lab_control::lifecycle::Lab::new(
        db,
        supervisor,
        dir.path().join("images"),
        runtime.handle().clone(),
        ec2lab_control::lifecycle::HealthChecks {
            checkin_timeout: ec2lab_control::model::status::DEFAULT_CHECKIN_TIMEOUT,
            stall_timeout: None,
        },
    );
    lab.register_catalog().expect("catalog");
    let mut s = Scenario {
        _dir: dir,
        _runtime: runtime,
        state: AppState::new("us-east-1", lab),
        model,
        ran: Default::default(),
    };
    let images = s.call("DescribeImages", &[("Owner.1", "self")]);
    let ami = between(&images, "<imageId>ami-", "</imageId>");
    let ami = format!("ami-{ami}");
    s.call("CreateKeyPair", &[("KeyName", "k1")]);
    s.call(
        "CreateKeyPair",
        &[("KeyName", "k2"), ("KeyType", "ed25519")],
    );
    s.call("ImportKeyPair", &[("KeyName", "k3"), ("PublicKeyMaterial",
        "c3NoLWVkMjU1MTkgQUFBQUMzTnphQzFsWkRJMU5URTVBQUFBSURKYThlUE1lQ0ROT1g1d0hVN1p2dGJYd3h2ZkVBTUVIQW1tZU9GT3pkNTQgdEB0Cg==")]);
    s.call("DescribeKeyPairs", &[("IncludePublicKey", "true")]);
    s.call("DeleteKeyPair", &[("KeyName", "k2")]);
    let run = s.call(
        "RunInstances",
        &[
            ("ImageId", ami.as_str()),
            ("InstanceType", "lab.nano"),
            ("MinCount", "1"),
            ("MaxCount", "2"),
            ("KeyName", "k1"),
            ("UserData", "IyEvYmluL3NoCmVjaG8gaGkK"),
            ("ClientToken", "t1"),
            ("TagSpecification.1.ResourceType", "instance"),
            ("TagSpecification.1.Tag.1.Key", "Name"),
            ("TagSpecification.1.Tag.1.Value", "web"),
        ],
    );
    let id = format!("i-{}", between(&run, "<instanceId>i-", "</instanceId>"));
    // The same token: the same launch answers the first reservation, any
    // other launch is refused.
    let mut first_launch = vec![
        ("ImageId", ami.as_str()),
        ("InstanceType", "lab.nano"),
        ("MinCount", "1"),
        ("MaxCount", "2"),
        ("KeyName", "k1"),
        ("UserData", "IyEvYmluL3NoCmVjaG8gaGkK"),
        ("ClientToken", "t1"),
        ("TagSpecification.1.ResourceType", "instance"),
        ("TagSpecification.1.Tag.1.Key", "Name"),
        ("TagSpecification.1.Tag.1.Value", "web"),
    ];
    let again = s.call("RunInstances", &first_launch);
    assert_eq!(
        between(&again, "<reservationId>", "<"),
        between(&run, "<reservationId>", "<")
    );
    first_launch[3] = ("MaxCount", "3");
    s.refused("RunInstances", &first_launch, "IdempotentParameterMismatch");
    assert!(run.contains("<privateIpAddress>172.31."), "{run}");
    let vpcs = s.call(
        "DescribeVpcs",
        &[("Filter.1.Name", "isDefault"), ("Filter.1.Value.1", "true")],
    );
    let vpc = format!("vpc-{}", between(&vpcs, "<vpcId>vpc-", "</vpcId>"));
    s.call(
        "CreateTags",
        &[
            ("ResourceId.1", vpc.as_str()),
            ("Tag.1.Key", "Name"),
            ("Tag.1.Value", "lab"),
        ],
    );
    for attribute in [
        "enableDnsSupport",
        "enableDnsHostnames",
        "enableNetworkAddressUsageMetrics",
    ] {
        s.call(
            "DescribeVpcAttribute",
            &[("VpcId", vpc.as_str()), ("Attribute", attribute)],
        );
    }
    let tagged = s.call("DescribeVpcs", &[("VpcId.1", vpc.as_str())]);
    assert!(tagged.contains("<value>lab</value>"), "{tagged}");
    let subnets = s.call(
        "DescribeSubnets",
        &[
            ("Filter.1.Name", "vpc-id"),
            ("Filter.1.Value.1", vpc.as_str()),
            ("Filter.2.Name", "default-for-az"),
            ("Filter.2.Value.1", "true"),
            ("Filter.3.Name", "availability-zone"),
            ("Filter.3.Value.1", "us-east-1b"),
        ],
    );
    let subnet = format!(
        "subnet-{}",
        between(&subnets, "<subnetId>subnet-", "</subnetId>")
    );
    let groups = s.call("DescribeSecurityGroups", &[("GroupName.1", "default")]);
    let group = format!("sg-{}", between(&groups, "<groupId>sg-", "</groupId>"));
    // The VPC's routing as Terraform's aws_default_vpc reads it: the main
    // table and default ACL by filter, then again by the ids found.
    let main = s.call(
        "DescribeRouteTables",
        &[
            ("Filter.1.Name", "association.main"),
            ("Filter.1.Value.1", "true"),
            ("Filter.2.Name", "vpc-id"),
            ("Filter.2.Value.1", vpc.as_str()),
        ],
    );
    let table = format!(
        "rtb-{}",
        between(&main, "<routeTableId>rtb-", "</routeTableId>")
    );
    let gateways = s.call(
        "DescribeInternetGateways",
        &[
            ("Filter.1.Name", "attachment.vpc-id"),
            ("Filter.1.Value.1", vpc.as_str()),
        ],
    );
    let gateway = format!(
        "igw-{}",
        between(&gateways, "<internetGatewayId>igw-", "</internetGatewayId>")
    );
    assert!(
        main.contains(&format!(
            "<destinationCidrBlock>0.0.0.0/0</destinationCidrBlock><gatewayId>{gateway}</gatewayId>"
        )),
        "{main}"
    );
    assert_eq!(
        s.call("DescribeRouteTables", &[("RouteTableId.1", table.as_str())]),
        main
    );
    let acl = s.call(
        "DescribeNetworkAcls",
        &[
            ("Filter.1.Name", "association.subnet-id"),
            ("Filter.1.Value.1", subnet.as_str()),
        ],
    );
    assert!(acl.contains("<ruleNumber>32767</ruleNumber>"), "{acl}");
    let acl_id = format!(
        "acl-{}",
        between(&acl, "<networkAclId>acl-", "</networkAclId>")
    );
    s.call(
        "DescribeNetworkAcls",
        &[("NetworkAclId.1", acl_id.as_str())],
    );
    s.refused(
        "DescribeRouteTables",
        &[("RouteTableId.1", "rtb-0000000000000000f")],
        "InvalidRouteTableID.NotFound",
    );
    let placed = s.call(
        "RunInstances",
        &[
            ("ImageId", ami.as_str()),
            ("InstanceType", "lab.nano"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("NetworkInterface.1.DeviceIndex", "0"),
            ("NetworkInterface.1.SubnetId", subnet.as_str()),
            ("NetworkInterface.1.PrivateIpAddress", "172.31.16.10"),
            ("NetworkInterface.1.DeleteOnTermination", "true"),
            ("NetworkInterface.1.AssociatePublicIpAddress", "true"),
            ("NetworkInterface.1.SecurityGroupId.1", group.as_str()),
        ],
    );
    assert!(
        placed.contains("<privateIpAddress>172.31.16.10</privateIpAddress>"),
        "{placed}"
    );
    s.call(
        "DescribeNetworkInterfaces",
        &[
            ("Filter.1.Name", "private-ip-address"),
            ("Filter.1.Value.1", "172.31.16.10"),
        ],
    );
    s.call("DescribeNetworkInterfaces", &[]);
    // Elastic IPs: allocated, associated with the instance, shown on it
    // and on its interface, moved off, released.
    let allocated = s.call("AllocateAddress", &[("Domain", "vpc")]);
    let allocation = format!(
        "eipalloc-{}",
        between(&allocated, "<allocationId>eipalloc-", "</allocationId>")
    );
    let eip = between(&allocated, "<publicIp>", "</publicIp>").to_string();
    let associated = s.call(
        "AssociateAddress",
        &[
            ("AllocationId", allocation.as_str()),
            ("InstanceId", id.as_str()),
        ],
    );
    assert!(
        associated.contains("<associationId>eipassoc-"),
        "{associated}"
    );
    let shown = s.call("DescribeInstances", &[("InstanceId.1", id.as_str())]);
    assert!(
        shown.contains(&format!("<ipAddress>{eip}</ipAddress>")),
        "{shown}"
    );
    let listed = s.call(
        "DescribeAddresses",
        &[("AllocationId.1", allocation.as_str())],
    );
    assert!(
        listed.contains(&format!("<instanceId>{id}</instanceId>")),
        "{listed}"
    );
    s.refused(
        "DescribeAddressesAttribute",
        &[
            ("AllocationId.1", allocation.as_str()),
            ("Attribute", "ptr-record"),
        ],
        "InvalidParameterValue",
    );
    let attribute = s.call(
        "DescribeAddressesAttribute",
        &[
            ("AllocationId.1", allocation.as_str()),
            ("Attribute", "domain-name"),
        ],
    );
    assert!(
        attribute.contains(&format!("<allocationId>{allocation}</allocationId>")),
        "{attribute}"
    );
    s.refused(
        "ReleaseAddress",
        &[("AllocationId", allocation.as_str())],
        "InvalidIPAddress.InUse",
    );
    s.call("DisassociateAddress", &[("PublicIp", eip.as_str())]);
    s.call("ReleaseAddress", &[("AllocationId", allocation.as_str())]);
    s.refused(
        "DescribeAddresses",
        &[("AllocationId.1", allocation.as_str())],
        "InvalidAllocationID.NotFound",
    );
    // Interface attributes, one at a time.
    let described = s.call("DescribeInstances", &[("InstanceId.1", id.as_str())]);
    let eni = format!(
        "eni-{}",
        between(
            &described,
            "<networkInterfaceId>eni-",
            "</networkInterfaceId>"
        )
    );
    s.call(
        "ModifyNetworkInterfaceAttribute",
        &[
            ("NetworkInterfaceId", eni.as_str()),
            ("SourceDestCheck.Value", "false"),
        ],
    );
    s.refused(
        "ModifyNetworkInterfaceAttribute",
        &[
            ("NetworkInterfaceId", eni.as_str()),
            ("SecurityGroupId.1", "sg-0123456789abcdef0"),
        ],
        "InvalidGroup.NotFound",
    );
    s.refused(
        "ModifyNetworkInterfaceAttribute",
        &[
            ("NetworkInterfaceId", eni.as_str()),
            ("SourceDestCheck.Value", "true"),
            ("Description.Value", "two at once"),
        ],
        "InvalidParameterCombination",
    );
    let modified = s.call(
        "DescribeNetworkInterfaces",
        &[("NetworkInterfaceId.1", eni.as_str())],
    );
    assert!(
        modified.contains("<sourceDestCheck>false</sourceDestCheck>"),
        "{modified}"
    );
    // What EC2 refuses about a launch's networking, refused the same way.
    let launch_with = |extra: &[(&'static str, &str)]| -> Vec<(&'static str, String)> {
        let mut pairs = vec![
            ("ImageId", ami.clone()),
            ("MinCount", "1".to_string()),
            ("MaxCount", "1".to_string()),
        ];
        pairs.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
        pairs
    };
    let missing_subnet = "subnet-0123456789abcdef0";
    let refusals: Vec<(Vec<(&str, String)>, &str)> = vec![
        (
            launch_with(&[("SubnetId", missing_subnet)]),
            "InvalidSubnetID.NotFound",
        ),
        (
            launch_with(&[("SubnetId", "subnet-nothex")]),
            "InvalidSubnetID.Malformed",
        ),
        (
            launch_with(&[("SecurityGroupId.1", "sg-0123456789abcdef0")]),
            "InvalidGroup.NotFound",
        ),
        (
            launch_with(&[("SecurityGroup.1", "web")]),
            "InvalidGroup.NotFound",
        ),
        (
            launch_with(&[("PrivateIpAddress", "172.31.16.10")]),
            "InvalidParameterValue",
        ),
        (
            launch_with(&[
                ("SubnetId", subnet.as_str()),
                ("PrivateIpAddress", "172.31.16.10"),
            ]),
            "InvalidIPAddress.InUse",
        ),
        (
            launch_with(&[
                ("SubnetId", subnet.as_str()),
                ("Placement.AvailabilityZone", "us-east-1a"),
            ]),
            "InvalidParameterValue",
        ),
        (
            launch_with(&[
                ("SubnetId", subnet.as_str()),
                ("NetworkInterface.1.DeviceIndex", "0"),
                ("NetworkInterface.1.SubnetId", subnet.as_str()),
            ]),
            "InvalidParameterCombination",
        ),
        (
            launch_with(&[
                ("NetworkInterface.1.DeviceIndex", "0"),
                ("NetworkInterface.2.DeviceIndex", "1"),
            ]),
            "UnsupportedOperation",
        ),
        (
            launch_with(&[("NetworkInterface.1.SubnetId", subnet.as_str())]),
            "MissingParameter",
        ),
        (
            launch_with(&[("Placement.GroupName", "cluster-1")]),
            "InvalidPlacementGroup.Unknown",
        ),
        (
            launch_with(&[("Placement.Tenancy", "dedicated")]),
            "UnsupportedOperation",
        ),
        (
            launch_with(&[("Placement.HostId", "h-0123456789abcdef0")]),
            "UnsupportedOperation",
        ),
    ];
    for (pairs, code) in refusals {
        let borrowed: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
        s.refused("RunInstances", &borrowed, code);
    }
    s.refused(
        "DescribeSubnets",
        &[("SubnetId.1", missing_subnet)],
        "InvalidSubnetID.NotFound",
    );
    s.refused(
        "DescribeVpcs",
        &[("Filter.1.Name", "colour"), ("Filter.1.Value.1", "red")],
        "InvalidParameterValue",
    );
    s.refused(
        "DescribeSecurityGroups",
        &[("GroupName.1", "web")],
        "InvalidGroup.NotFound",
    );
    s.call("DescribeInstances", &[]);
    s.call(
        "DescribeInstances",
        &[("Filter.1.Name", "tag:Name"), ("Filter.1.Value.1", "w*")],
    );
    s.call("DescribeInstances", &[("MaxResults", "5")]);
    // The launch fails (no VMM binary): the instance stops with a reason.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let d = s.call("DescribeInstances", &[("InstanceId.1", id.as_str())]);
        if d.contains("<name>stopped</name>") {
            assert!(d.contains("Server.InternalError"), "{d}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "never stopped: {d}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Credit specifications: stored per burstable instance, refused for
    // a type that does not burst.
    let burst = s.call(
        "RunInstances",
        &[
            ("ImageId", ami.as_str()),
            ("InstanceType", "t3.micro"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("CreditSpecification.CpuCredits", "standard"),
            ("TagSpecification.1.ResourceType", "volume"),
            ("TagSpecification.1.Tag.1.Key", "disk"),
            ("TagSpecification.1.Tag.1.Value", "root"),
            ("TagSpecification.2.ResourceType", "network-interface"),
            ("TagSpecification.2.Tag.1.Key", "nic"),
            ("TagSpecification.2.Tag.1.Value", "primary"),
        ],
    );
    let volume = format!("vol-{}", between(&burst, "<volumeId>vol-", "</volumeId>"));
    let eni = format!(
        "eni-{}",
        between(&burst, "<networkInterfaceId>eni-", "</networkInterfaceId>")
    );
    let burst = format!("i-{}", between(&burst, "<instanceId>i-", "</instanceId>"));
    let volumes = s.call("DescribeVolumes", &[("VolumeId.1", volume.as_str())]);
    assert!(
        volumes.contains("<value>root</value>") && volumes.contains(&burst),
        "{volumes}"
    );
    s.call("DescribeVolumes", &[]);
    s.refused(
        "DescribeVolumes",
        &[("VolumeId.1", "vol-0123456789abcdef0")],
        "InvalidVolume.NotFound",
    );
    let nic = s.call(
        "DescribeNetworkInterfaces",
        &[("NetworkInterfaceId.1", eni.as_str())],
    );
    assert!(nic.contains("<value>primary</value>"), "{nic}");
    let credits = s.call(
        "DescribeInstanceCreditSpecifications",
        &[("InstanceId.1", burst.as_str())],
    );
    assert!(
        credits.contains("<cpuCredits>standard</cpuCredits>"),
        "{credits}"
    );
    let modified = s.call(
        "ModifyInstanceCreditSpecification",
        &[
            ("InstanceCreditSpecification.1.InstanceId", burst.as_str()),
            ("InstanceCreditSpecification.1.CpuCredits", "unlimited"),
            ("InstanceCreditSpecification.2.InstanceId", id.as_str()),
            ("InstanceCreditSpecification.2.CpuCredits", "unlimited"),
        ],
    );
    assert!(
        modified.contains("InstanceCreditSpecification.NotSupported"),
        "{modified}"
    );
    let credits = s.call("DescribeInstanceCreditSpecifications", &[]);
    assert!(
        credits.contains("<cpuCredits>unlimited</cpuCredits>") && !credits.contains(&id),
        "{credits}"
    );
    let options = s.call(
        "ModifyInstanceMetadataOptions",
        &[
            ("InstanceId", id.as_str()),
            ("HttpTokens", "required"),
            ("HttpPutResponseHopLimit", "2"),
        ],
    );
    assert!(
        options.contains("<httpTokens>required</httpTokens>")
            && options.contains("<httpPutResponseHopLimit>2</httpPutResponseHopLimit>"),
        "{options}"
    );
    let described = s.call("DescribeInstances", &[("InstanceId.1", id.as_str())]);
    assert!(
        described.contains("<httpTokens>required</httpTokens>"),
        "{described}"
    );
    s.refused(
        "ModifyInstanceMetadataOptions",
        &[
            ("InstanceId", id.as_str()),
            ("HttpPutResponseHopLimit", "65"),
        ],
        "InvalidParameterValue",
    );
    s.refused(
        "DescribeInstanceCreditSpecifications",
        &[("InstanceId.1", id.as_str())],
        "InstanceCreditSpecification.NotSupported",
    );
    s.refused(
        "RunInstances",
        &[
            ("ImageId", ami.as_str()),
            ("InstanceType", "lab.nano"),
            ("MinCount", "1"),
            ("MaxCount", "1"),
            ("CreditSpecification.CpuCredits", "standard"),
        ],
        "InvalidParameterCombination",
    );
    s.call("DescribeInstanceStatus", &[("IncludeAllInstances", "true")]);
    s.call(
        "DescribeInstanceAttribute",
        &[("InstanceId", id.as_str()), ("Attribute", "userData")],
    );
    // Every name of botocore's InstanceAttributeName enum.
    s.call(
        "ModifyInstanceAttribute",
        &[
            ("InstanceId", id.as_str()),
            ("DisableApiStop.Value", "true"),
        ],
    );
    for attribute in [
        "instanceType",
        "kernel",
        "ramdisk",
        "userData",
        "disableApiTermination",
        "instanceInitiatedShutdownBehavior",
        "rootDeviceName",
        "blockDeviceMapping",
        "productCodes",
        "sourceDestCheck",
        "groupSet",
        "ebsOptimized",
        "sriovNetSupport",
        "enaSupport",
        "enclaveOptions",
        "disableApiStop",
    ] {
        let xml = s.call(
            "DescribeInstanceAttribute",
            &[("InstanceId", id.as_str()), ("Attribute", attribute)],
        );
        assert!(xml.contains(&format!("<{attribute}")), "{xml}");
    }
    let stop = s.call(
        "DescribeInstanceAttribute",
        &[("InstanceId", id.as_str()), ("Attribute", "disableApiStop")],
    );
    assert!(stop.contains("<value>true</value>"), "{stop}");
    s.call(
        "ModifyInstanceAttribute",
        &[
            ("InstanceId", id.as_str()),
            ("Attribute", "disableApiStop"),
            ("Value", "false"),
        ],
    );
    s.refused(
        "DescribeInstanceAttribute",
        &[("InstanceId", id.as_str()), ("Attribute", "colour")],
        "InvalidParameterValue",
    );
    s.call(
        "ModifyInstanceAttribute",
        &[
            ("InstanceId", id.as_str()),
            ("InstanceType.Value", "lab.micro"),
        ],
    );
    s.call(
        "CreateTags",
        &[
            ("ResourceId.1", id.as_str()),
            ("Tag.1.Key", "env"),
            ("Tag.1.Value", "test"),
        ],
    );
    s.call(
        "DescribeTags",
        &[
            ("Filter.1.Name", "resource-id"),
            ("Filter.1.Value.1", id.as_str()),
        ],
    );
    s.call(
        "DeleteTags",
        &[("ResourceId.1", id.as_str()), ("Tag.1.Key", "env")],
    );
    s.call("GetConsoleOutput", &[("InstanceId", id.as_str())]);
    s.call("StopInstances", &[("InstanceId.1", id.as_str())]);
    s.call("StartInstances", &[("InstanceId.1", id.as_str())]);
    // Without a VMM it never runs, so a reboot is refused as on EC2.
    s.refused(
        "RebootInstances",
        &[("InstanceId.1", id.as_str())],
        "IncorrectInstanceState",
    );
    s.call("TerminateInstances", &[("InstanceId.1", id.as_str())]);
    let location = s
        ._dir
        .path()
        .join("images/lab-minimal")
        .display()
        .to_string();
    let registered = s.call(
        "RegisterImage",
        &[("ImageLocation", location.as_str()), ("Name", "copy")],
    );
    let copy = format!(
        "ami-{}",
        between(&registered, "<imageId>ami-", "</imageId>")
    );
    s.call("DeregisterImage", &[("ImageId", copy.as_str())]);
    let missing: Vec<&str> = common::SCENARIO_ACTIONS
        .iter()
        .copied()
        .filter(|a| !s.ran.contains(*a))
        .collect();
    assert!(missing.is_empty(), "scenario did not run {missing:?}");
}

#[test]
fn every_implemented_action_passes_the_botocore_shape_check() {
    let Some(model) = common::model("every_implemented_action_passes_the_botocore_shape_check")
    else {
        return;
    };
    for (action, pairs) in common::CASES {
        let xml = run(action, pairs);
        if let Err(errors) = model.validate_output(action, &xml) {
            panic!("{action} {pairs:?}:\n{}\n{xml}", errors.join("\n"));
        }
    }
}

#[test]
fn operations_list_matches_botocore_model() {
    let Some(model) = common::model("operations_list_matches_botocore_model") else {
        return;
    };
    let names = model.operation_names();
    assert_eq!(
        EC2_OPERATIONS,
        names.as_slice(),
        "regenerate control/src/api/actions/operations.rs from the model"
    );
}

fn assert_rejected(
    model: &ec2lab_control::api::shapes::ServiceModel,
    action: &str,
    xml: &str,
    expect: &str,
) {
    match model.validate_output(action, xml) {
        Ok(()) => panic!("accepted:\n{xml}"),
        Err(errors) => assert!(
            errors.iter().any(|e| e.contains(expect)),
            "no error mentioning {expect:?} in {errors:#?}"
        ),
    }
}

#[test]
fn checker_rejects_unknown_elements_bad_scalars_and_missing_required_members() {
    let Some(model) = common::model("checker_rejects_unknown_elements_bad_scalars") else {
        return;
    };
    let region = |extra: XmlNode| {
        xml::render_response(
            "DescribeRegions",
            "r",
            &[XmlNode::list(
                "regionInfo",
                [vec![XmlNode::text("regionName", "us-east-1"), extra]],
            )],
        )
    };
    assert_rejected(
        &model,
        "DescribeRegions",
        &region(XmlNode::text("regionname", "typo")),
        "regionname: unknown element",
    );
    let instance_type = |members: Vec<XmlNode>| {
        xml::render_response(
            "DescribeInstanceTypes",
            "r",
            &[XmlNode::list("instanceTypeSet", [members])],
        )
    };
    assert_rejected(
        &model,
        "DescribeInstanceTypes",
        &instance_type(vec![XmlNode::text("bareMetal", "yes")]),
        "not a boolean",
    );
    assert_rejected(
        &model,
        "DescribeInstanceTypes",
        &instance_type(vec![XmlNode::text("hypervisor", "kvm")]),
        "not a InstanceTypeHypervisor",
    );
    assert_rejected(
        &model,
        "DescribeInstanceTypes",
        &instance_type(vec![XmlNode::element(
            "memoryInfo",
            vec![XmlNode::text("sizeInMiB", "1.5")],
        )]),
        "not a 64-bit integer",
    );
    assert_rejected(
        &model,
        "DescribeInstanceTypes",
        &instance_type(vec![XmlNode::text("instanceType", "t9.huge")]),
        "not a InstanceType",
    );
    // Lists must hold <item>s, not bare members.
    let bare = xml::render_response(
        "DescribeRegions",
        "r",
        &[XmlNode::element(
            "regionInfo",
            vec![XmlNode::text("regionName", "us-east-1")],
        )],
    );
    assert_rejected(&model, "DescribeRegions", &bare, "must be <item>");
    // RunInstancesMonitoringEnabled requires Enabled.
    let spot = xml::render_response(
        "DescribeSpotInstanceRequests",
        "r",
        &[XmlNode::list(
            "spotInstanceRequestSet",
            [vec![XmlNode::element(
                "launchSpecification",
                vec![XmlNode::element("monitoring", vec![])],
            )]],
        )],
    );
    assert_rejected(
        &model,
        "DescribeSpotInstanceRequests",
        &spot,
        "required member Enabled",
    );
    let timestamps = xml::render_response(
        "DescribeSpotInstanceRequests",
        "r",
        &[XmlNode::list(
            "spotInstanceRequestSet",
            [vec![XmlNode::text("createTime", "25/11/2026")]],
        )],
    );
    assert_rejected(
        &model,
        "DescribeSpotInstanceRequests",
        &timestamps,
        "not an ISO 8601",
    );
    let wrong_root = region(XmlNode::text("optInStatus", "opt-in-not-required"))
        .replace("DescribeRegionsResponse", "DescribeRegionResponse");
    assert_rejected(
        &model,
        "DescribeRegions",
        &wrong_root,
        "expected <DescribeRegionsResponse>",
    );
    let no_ns = region(XmlNode::text("optInStatus", "x")).replace(" xmlns=", " xmlns:other=");
    assert_rejected(&model, "DescribeRegions", &no_ns, "namespace");
}

#[test]
fn checker_accepts_a_timestamp_and_ec2lab_instance_types() {
    let Some(model) = common::model("checker_accepts_a_timestamp_and_ec2lab_instance_types") else {
        return;
    };
    let spot = xml::render_response(
        "DescribeSpotInstanceRequests",
        "r",
        &[XmlNode::list(
            "spotInstanceRequestSet",
            [vec![XmlNode::timestamp(
                "createTime",
                std::time::SystemTime::now(),
            )]],
        )],
    );
    assert_eq!(
        model.validate_output("DescribeSpotInstanceRequests", &spot),
        Ok(())
    );
}

#[test]
fn security_group_actions_pass_the_botocore_shape_check() {
    let Some(model) = common::model("security_group_actions_pass_the_botocore_shape_check") else {
        return;
    };
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let mut s = Scenario {
        _dir: tempfile::tempdir().expect("tempdir"),
        state: AppState::new("us-east-1", common::guestless_lab(runtime.handle())),
        _runtime: runtime,
        model,
        ran: Default::default(),
    };
    let created = s.call(
        "CreateSecurityGroup",
        &[
            ("GroupName", "WebSSHAccess"),
            ("GroupDescription", "WebSSHAccess"),
            ("TagSpecification.1.ResourceType", "security-group"),
            ("TagSpecification.1.Tag.1.Key", "Name"),
            ("TagSpecification.1.Tag.1.Value", "web"),
        ],
    );
    let web = format!("sg-{}", between(&created, "<groupId>sg-", "</groupId>"));
    s.refused(
        "CreateSecurityGroup",
        &[("GroupName", "WebSSHAccess"), ("GroupDescription", "again")],
        "InvalidGroup.Duplicate",
    );
    // The CLI's --protocol tcp --port 22 --cidr 0.0.0.0/0.
    let ssh = s.call(
        "AuthorizeSecurityGroupIngress",
        &[
            ("GroupName", "WebSSHAccess"),
            ("IpProtocol", "tcp"),
            ("FromPort", "22"),
            ("ToPort", "22"),
            ("CidrIp", "0.0.0.0/0"),
        ],
    );
    assert!(ssh.contains("<isEgress>false</isEgress>"), "{ssh}");
    s.refused(
        "AuthorizeSecurityGroupIngress",
        &[
            ("GroupId", web.as_str()),
            ("IpPermissions.1.IpProtocol", "6"),
            ("IpPermissions.1.FromPort", "22"),
            ("IpPermissions.1.ToPort", "22"),
            ("IpPermissions.1.IpRanges.1.CidrIp", "0.0.0.0/0"),
        ],
        "InvalidPermission.Duplicate",
    );
    s.call(
        "AuthorizeSecurityGroupIngress",
        &[
            ("GroupId", web.as_str()),
            ("IpPermissions.1.IpProtocol", "icmp"),
            ("IpPermissions.1.FromPort", "8"),
            ("IpPermissions.1.ToPort", "-1"),
            ("IpPermissions.1.IpRanges.1.CidrIp", "10.0.0.0/8"),
            ("IpPermissions.1.IpRanges.1.Description", "pings"),
            ("IpPermissions.2.IpProtocol", "-1"),
            ("IpPermissions.2.Groups.1.GroupName", "default"),
        ],
    );
    // Terraform drops the IPv6 default egress of each group it makes and
    // expects this answer: an IPv4-only lab has no such rule. Authorize
    // still refuses IPv6 outright.
    let ipv6_egress = [
        ("GroupId", web.as_str()),
        ("IpPermissions.1.IpProtocol", "-1"),
        ("IpPermissions.1.FromPort", "0"),
        ("IpPermissions.1.ToPort", "0"),
        ("IpPermissions.1.Ipv6Ranges.1.CidrIpv6", "::/0"),
    ];
    s.refused(
        "RevokeSecurityGroupEgress",
        &ipv6_egress,
        "InvalidPermission.NotFound",
    );
    s.refused(
        "AuthorizeSecurityGroupEgress",
        &ipv6_egress,
        "UnsupportedOperation",
    );
    s.call(
        "AuthorizeSecurityGroupEgress",
        &[
            ("GroupId", web.as_str()),
            ("IpPermissions.1.IpProtocol", "udp"),
            ("IpPermissions.1.FromPort", "53"),
            ("IpPermissions.1.ToPort", "53"),
            ("IpPermissions.1.IpRanges.1.CidrIp", "172.31.0.2/32"),
        ],
    );
    let rules = s.call(
        "DescribeSecurityGroupRules",
        &[
            ("Filter.1.Name", "group-id"),
            ("Filter.1.Value.1", web.as_str()),
        ],
    );
    assert_eq!(rules.matches("<securityGroupRuleId>").count(), 5, "{rules}");
    let groups = s.call("DescribeSecurityGroups", &[("GroupId.1", web.as_str())]);
    assert!(
        groups.contains("<description>pings</description>"),
        "{groups}"
    );
    s.call(
        "RevokeSecurityGroupEgress",
        &[
            ("GroupId", web.as_str()),
            ("IpPermissions.1.IpProtocol", "-1"),
            ("IpPermissions.1.IpRanges.1.CidrIp", "0.0.0.0/0"),
        ],
    );
    s.refused(
        "RevokeSecurityGroupIngress",
        &[
            ("GroupId", web.as_str()),
            ("IpProtocol", "tcp"),
            ("FromPort", "23"),
            ("ToPort", "23"),
            ("CidrIp", "0.0.0.0/0"),
        ],
        "InvalidPermission.NotFound",
    );
    let rule_id = format!("sgr-{}", between(&ssh, "<securityGroupRuleId>sgr-", "<"));
    s.call(
        "RevokeSecurityGroupIngress",
        &[
            ("GroupId", web.as_str()),
            ("SecurityGroupRuleId.1", rule_id.as_str()),
        ],
    );
    let default = s.call("DescribeSecurityGroups", &[("GroupName.1", "default")]);
    let default = format!("sg-{}", between(&default, "<groupId>sg-", "</groupId>"));
    s.refused(
        "DeleteSecurityGroup",
        &[("GroupId", default.as_str())],
        "CannotDelete",
    );
    s.call("DeleteSecurityGroup", &[("GroupName", "WebSSHAccess")]);
    s.refused(
        "DeleteSecurityGroup",
        &[("GroupId", web.as_str())],
        "InvalidGroup.NotFound",
    );
    let missing: Vec<&str> = common::SECURITY_GROUP_SCENARIO_ACTIONS
        .iter()
        .copied()
        .filter(|a| !s.ran.contains(*a))
        .collect();
    assert!(missing.is_empty(), "scenario did not run {missing:?}");
}

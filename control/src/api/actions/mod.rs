//! The action table: the one place that lists every EC2 action ec2lab
//! implements, and the dispatcher that uses it.
//!
//! Handlers are thin and synchronous: read [`Params`], call the domain,
//! return the response members as [`XmlNode`]s. The server runs them on a
//! blocking thread, so they may touch SQLite directly.
//!
//! An action in botocore's EC2 model but not in [`ACTIONS`] answers
//! `UnsupportedOperation`; a name in neither answers `InvalidAction`. Never
//! an empty success: a client must not believe something happened.

mod addresses;
mod common;
mod credit_specifications;
mod filter;
mod images;
mod instance_status;
mod instances;
mod keypairs;
mod operations;
mod regions;
mod routing;
mod security_groups;
mod tags;
mod volumes;
mod vpcs;

pub use filter::{wildcard_match, Filter};
pub use operations::EC2_OPERATIONS;

use std::sync::Arc;

use super::error::Ec2Error;
use super::query::Params;
use super::xml::XmlNode;
use crate::lifecycle::Lab;
use crate::model::vpc::RuleDirection;

/// What the whole daemon shares with handlers: the region it answers for
/// and the lab. There is no lab-less mode: a server that must not start
/// guests (protocol tests, `scripts/bench api`) gets a lab whose VMM binary
/// does not exist, so every action behaves as in the daemon.
#[derive(Clone)]
pub struct AppState {
    /// The region this daemon pretends to be (`us-east-1` by default).
    pub region: String,
    /// The repository, the supervisor and the instances' lives.
    pub lab: Arc<Lab>,
}

impl AppState {
    /// The state of a daemon answering for `region`.
    pub fn new(region: impl Into<String>, lab: Arc<Lab>) -> Self {
        Self {
            region: region.into(),
            lab,
        }
    }
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// One request's context: who is asking, where, and with which shared
/// state. Borrowed so building it per request costs nothing.
#[derive(Debug, Clone, Copy)]
pub struct Ctx<'a> {
    pub region: &'a str,
    /// The id sent back in `<requestId>`; handlers log with it.
    pub request_id: &'a str,
    pub state: &'a AppState,
    /// `DryRun=true`: the request is parsed and checked but must not act.
    pub dry_run: bool,
}

impl Ctx<'_> {
    /// The lab the request acts on. A dry run stops here with
    /// `DryRunOperation`: handlers parse and check every parameter first
    /// and then make their one call into the lab, so a dry run answers
    /// exactly when the real request would have reached the lab (ec2lab
    /// has no IAM to check beyond that).
    pub fn lab(&self) -> Result<&Arc<Lab>, Ec2Error> {
        if self.dry_run {
            return Err(Ec2Error::dry_run_operation());
        }
        Ok(&self.state.lab)
    }
}

/// A handler: parameters in, response members (the children of
/// `<{Action}Response>` after `<requestId>`) out.
pub type Handler = fn(&Ctx<'_>, &Params) -> Result<Vec<XmlNode>, Ec2Error>;

/// Every implemented action, sorted by name (a test checks), so lookups are
/// a binary search and the list reads like an index.
pub const ACTIONS: &[(&str, Handler)] = &[
    ("AllocateAddress", addresses::allocate_address),
    ("AssociateAddress", addresses::associate_address),
    ("AuthorizeSecurityGroupEgress", |ctx, params| {
        security_groups::authorize(ctx, params, RuleDirection::Egress)
    }),
    ("AuthorizeSecurityGroupIngress", |ctx, params| {
        security_groups::authorize(ctx, params, RuleDirection::Ingress)
    }),
    ("CreateKeyPair", keypairs::create_key_pair),
    (
        "CreateSecurityGroup",
        security_groups::create_security_group,
    ),
    ("CreateTags", tags::create_tags),
    ("DeleteKeyPair", keypairs::delete_key_pair),
    (
        "DeleteSecurityGroup",
        security_groups::delete_security_group,
    ),
    ("DeleteTags", tags::delete_tags),
    ("DeregisterImage", images::deregister_image),
    ("DescribeAddresses", addresses::describe_addresses),
    (
        "DescribeAddressesAttribute",
        addresses::describe_addresses_attribute,
    ),
    (
        "DescribeAvailabilityZones",
        regions::describe_availability_zones,
    ),
    ("DescribeImages", images::describe_images),
    (
        "DescribeInstanceAttribute",
        instances::describe_instance_attribute,
    ),
    (
        "DescribeInstanceCreditSpecifications",
        credit_specifications::describe_instance_credit_specifications,
    ),
    (
        "DescribeInstanceStatus",
        instance_status::describe_instance_status,
    ),
    ("DescribeInstanceTypes", regions::describe_instance_types),
    ("DescribeInstances", instances::describe_instances),
    (
        "DescribeInternetGateways",
        routing::describe_internet_gateways,
    ),
    ("DescribeKeyPairs", keypairs::describe_key_pairs),
    ("DescribeNetworkAcls", routing::describe_network_acls),
    (
        "DescribeNetworkInterfaces",
        vpcs::describe_network_interfaces,
    ),
    ("DescribeRegions", regions::describe_regions),
    ("DescribeRouteTables", routing::describe_route_tables),
    (
        "DescribeSecurityGroupRules",
        security_groups::describe_security_group_rules,
    ),
    ("DescribeSecurityGroups", vpcs::describe_security_groups),
    ("DescribeSubnets", vpcs::describe_subnets),
    ("DescribeTags", tags::describe_tags),
    ("DescribeVolumes", volumes::describe_volumes),
    ("DescribeVpcAttribute", vpcs::describe_vpc_attribute),
    ("DescribeVpcs", vpcs::describe_vpcs),
    ("DisassociateAddress", addresses::disassociate_address),
    ("GetConsoleOutput", instances::get_console_output),
    ("ImportKeyPair", keypairs::import_key_pair),
    (
        "ModifyInstanceAttribute",
        instances::modify_instance_attribute,
    ),
    (
        "ModifyInstanceCreditSpecification",
        credit_specifications::modify_instance_credit_specification,
    ),
    (
        "ModifyInstanceMetadataOptions",
        instances::modify_instance_metadata_options,
    ),
    (
        "ModifyNetworkInterfaceAttribute",
        vpcs::modify_network_interface_attribute,
    ),
    ("RebootInstances", instances::reboot_instances),
    ("RegisterImage", images::register_image),
    ("ReleaseAddress", addresses::release_address),
    ("RevokeSecurityGroupEgress", |ctx, params| {
        security_groups::revoke(ctx, params, RuleDirection::Egress)
    }),
    ("RevokeSecurityGroupIngress", |ctx, params| {
        security_groups::revoke(ctx, params, RuleDirection::Ingress)
    }),
    ("RunInstances", instances::run_instances),
    ("StartInstances", instances::start_instances),
    ("StopInstances", instances::stop_instances),
    ("TerminateInstances", instances::terminate_instances),
];

/// The handler for `action`, or the error EC2 gives for it.
pub fn lookup(action: &str) -> Result<Handler, Ec2Error> {
    if let Ok(i) = ACTIONS.binary_search_by(|(name, _)| (*name).cmp(action)) {
        return Ok(ACTIONS[i].1);
    }
    if EC2_OPERATIONS.binary_search(&action).is_ok() {
        Err(Ec2Error::unsupported_action(action))
    } else {
        Err(Ec2Error::invalid_action(action))
    }
}

/// Runs `action`. A dry run (`DryRun=true`) runs the handler's parsing
/// and checks and stops at its call into the lab ([`Ctx::lab`]); an action
/// that never reaches the lab has nothing to act on, and its dry run
/// answers `DryRunOperation` once its parameters passed.
pub fn dispatch(ctx: &Ctx<'_>, action: &str, params: &Params) -> Result<Vec<XmlNode>, Ec2Error> {
    let handler = lookup(action)?;
    let dry_run = params.dry_run()?;
    let ctx = Ctx { dry_run, ..*ctx };
    let answer = handler(&ctx, params)?;
    if dry_run {
        return Err(Ec2Error::dry_run_operation());
    }
    Ok(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_table_is_sorted_unique_and_in_the_model() {
        for pair in ACTIONS.windows(2) {
            assert!(pair[0].0 < pair[1].0, "{} before {}", pair[0].0, pair[1].0);
        }
        for (name, _) in ACTIONS {
            assert!(
                EC2_OPERATIONS.binary_search(name).is_ok(),
                "{name} not in the model"
            );
        }
        for pair in EC2_OPERATIONS.windows(2) {
            assert!(pair[0] < pair[1]);
        }
    }

    #[test]
    fn unknown_actions_are_invalid_and_unimplemented_ones_unsupported() {
        let err = lookup("DescribeVpnGateways")
            .err()
            .map(|e| e.code().to_owned());
        assert_eq!(err.as_deref(), Some("UnsupportedOperation"));
        let err = lookup("MakeCoffee").err().map(|e| e.code().to_owned());
        assert_eq!(err.as_deref(), Some("InvalidAction"));
        assert!(lookup("DescribeRegions").is_ok());
    }

    #[test]
    fn dry_run_is_answered_with_412_before_the_handler() {
        // A lab that can start nothing: DescribeRegions never reaches it.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime");
        let nowhere = std::path::Path::new("/nonexistent");
        let lab = Lab::new(
            crate::db::Db::open_in_memory().expect("db"),
            crate::supervisor::Supervisor::new(nowhere.join("vmm"), nowhere.join("instances")),
            nowhere.join("images"),
            runtime.handle().clone(),
            crate::lifecycle::HealthChecks {
                checkin_timeout: crate::model::status::DEFAULT_CHECKIN_TIMEOUT,
                stall_timeout: None,
            },
        );
        let state = AppState::new("us-east-1", lab);
        let ctx = Ctx {
            region: &state.region,
            request_id: "r",
            state: &state,
            dry_run: false,
        };
        let params = Params::from_pairs([("DryRun", "true")]);
        let err = dispatch(&ctx, "DescribeRegions", &params).expect_err("dry run");
        assert_eq!(err.code(), "DryRunOperation");
        let params = Params::from_pairs([("DryRun", "maybe")]);
        let err = dispatch(&ctx, "DescribeRegions", &params).expect_err("bad bool");
        assert_eq!(err.code(), "InvalidParameterValue");

        // Parameters are checked before a dry run answers, and a dry run
        // that passes acts on nothing.
        for bad in ["0", "-1"] {
            let params = Params::from_pairs([
                ("DryRun", "true"),
                ("ImageId", "ami-0123456789abcdef0"),
                ("MinCount", "1"),
                ("MaxCount", bad),
            ]);
            let err = dispatch(&ctx, "RunInstances", &params).expect_err("bad count");
            assert_ne!(err.code(), "DryRunOperation", "MaxCount {bad}");
        }
        let params = Params::from_pairs([
            ("DryRun", "true"),
            ("Tag.1.Key", "k"),
            ("ResourceId.1", "i-0123456789abcdef0"),
        ]);
        let err = dispatch(&ctx, "CreateTags", &params).expect_err("dry run");
        assert_eq!(err.code(), "DryRunOperation");
        let tags = dispatch(
            &ctx,
            "DescribeTags",
            &Params::from_pairs(std::iter::empty::<(&str, &str)>()),
        )
        .expect("describe");
        assert!(
            format!("{tags:?}").contains("tagSet") && !format!("{tags:?}").contains("i-0123"),
            "a dry run tagged: {tags:?}"
        );
    }
}

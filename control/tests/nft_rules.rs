//! The rendered security group rulesets are valid nftables: `nft -c -f`
//! (check mode: parsed and validated by the kernel, nothing applied) in a
//! network namespace of the test's own (`unshare --net`), so the host's
//! rules are never touched.
//!
//! Needs `nft` (Debian's nftables, scripts/install-deps) and root for the
//! namespace; without them it prints SKIPPED, unless EC2LAB_REQUIRE_NFT=1
//! (CI) makes that a failure.

use std::io::Write;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

use ec2lab_control::db::{Db, NetworkQuery, NewSecurityGroup};
use ec2lab_control::model::security_group::{GroupRef, RuleRequest};
use ec2lab_control::model::vpc::{
    Cidr, GroupIdentifier, NetworkInterface, RuleDirection, RulePeer, ANYWHERE,
};
use ec2lab_control::network::rules::{self, Port};

/// `nft -c -f -` in a fresh network namespace; None when the test must skip.
fn nft_check(ruleset: &str) -> Option<Result<(), String>> {
    let required = std::env::var("EC2LAB_REQUIRE_NFT").as_deref() == Ok("1");
    let child = Command::new("unshare")
        .args(["--net", "nft", "-c", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            assert!(
                !required,
                "cannot run unshare/nft: {e} (EC2LAB_REQUIRE_NFT=1)"
            );
            eprintln!("SKIPPED nft_rules: cannot run unshare: {e}");
            return None;
        }
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(ruleset.as_bytes())
        .expect("write ruleset");
    let out = child.wait_with_output().expect("nft");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let missing = stderr.contains("nft: No such file")
        || stderr.contains("failed to execute nft")
        || stderr.contains("unshare failed");
    if !out.status.success() && missing {
        assert!(!required, "nft unusable: {stderr} (EC2LAB_REQUIRE_NFT=1)");
        eprintln!("SKIPPED nft_rules: {stderr}");
        return None;
    }
    Some(if out.status.success() {
        Ok(())
    } else {
        Err(stderr)
    })
}

#[test]
fn the_golden_ruleset_passes_nft_check() {
    let golden = include_str!("../src/network/rules_golden.nft");
    if let Some(result) = nft_check(golden) {
        result.unwrap_or_else(|e| panic!("nft -c refused the golden ruleset:\n{e}\n{golden}"));
    }
}

#[test]
fn a_ruleset_from_groups_made_through_the_store_passes_nft_check() {
    let db = Db::open_in_memory().expect("db");
    let web = db
        .create_security_group(&NewSecurityGroup {
            name: "web".into(),
            description: "web \"tier\" }; flush ruleset".replace('"', ""),
            ..NewSecurityGroup::default()
        })
        .expect("group");
    let rule = |protocol: &str, from, to, peer| RuleRequest {
        ip_protocol: protocol.into(),
        from_port: from,
        to_port: to,
        peer,
        description: Some("from the store; flush ruleset".into()),
    };
    let anywhere = RulePeer::Cidr(ANYWHERE);
    let lan = RulePeer::Cidr(Cidr::parse("10.0.0.0/8").expect("cidr"));
    db.authorize_security_group_rules(
        &GroupRef::Id(web.id.clone()),
        RuleDirection::Ingress,
        &[
            rule("tcp", Some(22), Some(22), anywhere.clone()),
            rule("udp", Some(1000), Some(2000), lan.clone()),
            rule("icmp", Some(8), Some(0), anywhere.clone()),
            rule("-1", None, None, RulePeer::Group("default".into())),
            rule("50", None, None, lan),
        ],
    )
    .expect("authorize");
    let groups = db
        .list_security_groups(&NetworkQuery::default(), &[])
        .expect("groups")
        .items;
    let nic = |n: u8, sdc| NetworkInterface {
        id: format!("eni-{n:017x}"),
        subnet_id: "subnet-0123456789abcdef0".into(),
        vpc_id: web.vpc_id.clone(),
        availability_zone: "us-east-1a".into(),
        description: String::new(),
        mac_address: format!("02:00:00:00:01:{n:02x}"),
        private_ip_address: Ipv4Addr::new(172, 31, 0, n),
        source_dest_check: sdc,
        public_ip: None,
        elastic_ip: None,
        groups: groups
            .iter()
            .map(|g| GroupIdentifier {
                group_id: g.id.clone(),
                group_name: g.name.clone(),
            })
            .collect(),
        attachment: None,
        owner_id: web.owner_id.clone(),
        tags: Default::default(),
    };
    let nics = [nic(4, true), nic(5, false)];
    let ports = [
        Port {
            tap: "tapa",
            interface: &nics[0],
        },
        Port {
            tap: "tap_b",
            interface: &nics[1],
        },
    ];
    for ports in [&ports[..], &[]] {
        let text = rules::render(&groups, ports).expect("render");
        assert!(!text.contains("flush"), "{text}");
        if let Some(result) = nft_check(&text) {
            result.unwrap_or_else(|e| panic!("nft -c refused:\n{e}\n{text}"));
        }
    }
}

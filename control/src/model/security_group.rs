//! Security groups as EC2 takes them: the names it accepts, how a rule's
//! protocol and ports are normalised, and the rules about a group's rule
//! list (no duplicates, at most 60 per direction, revoking only what
//! exists). Pure functions over [`SecurityGroupRule`]s, so the repository
//! runs them inside the transaction that changes the list and a refusal
//! leaves nothing half-made.
//!
//! Normalising at the door (`6` → `tcp`, ports dropped for "all traffic")
//! is what makes "the same rule" a plain equality test, for the duplicate
//! check as for revoke, and what lets the nftables renderer trust every
//! field it prints.

use super::vpc::{RuleDirection, RulePeer, SecurityGroupRule, ALL_PROTOCOLS};

/// EC2's quota: inbound and outbound rules count separately, 60 each.
pub const MAX_RULES_PER_DIRECTION: usize = 60;

/// The longest group name and description EC2 accepts.
pub const MAX_NAME_LEN: usize = 255;

/// What EC2 refuses about groups and their rules; each variant is one EC2
/// error code ([`SecurityGroupError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecurityGroupError {
    /// EC2: InvalidGroup.Duplicate.
    #[error("The security group '{name}' already exists for VPC '{vpc_id}'")]
    DuplicateGroup { name: String, vpc_id: String },
    /// EC2: InvalidGroup.Reserved (`default` belongs to the VPC).
    #[error("The security group '{0}' is reserved")]
    ReservedName(String),
    /// EC2: InvalidParameterValue, for a name or description EC2 refuses.
    #[error("Invalid value for {field}: {why}")]
    InvalidText {
        field: &'static str,
        why: &'static str,
    },
    /// EC2: CannotDelete.
    #[error("the specified group: \"{id}\" name: \"default\" cannot be deleted by a user")]
    CannotDeleteDefault { id: String },
    /// EC2: DependencyViolation (an interface is in the group, or another
    /// group's rule names it).
    #[error("resource {id} has a dependent object")]
    InUse { id: String },
    /// EC2: InvalidParameterValue.
    #[error("Invalid value '{0}' for IP protocol. Unknown protocol.")]
    InvalidProtocol(String),
    /// EC2: InvalidParameterValue.
    #[error("Invalid {what} for {protocol}: {detail}")]
    InvalidPorts {
        protocol: String,
        what: &'static str,
        detail: String,
    },
    /// EC2: InvalidParameterValue.
    #[error("Value ({0}) for parameter cidrIp is invalid. This is not a valid CIDR block.")]
    InvalidCidr(String),
    /// EC2: InvalidParameterValue (a peer group in another VPC).
    #[error("You have specified two resources that belong to different networks.")]
    PeerInAnotherVpc,
    /// EC2: MissingParameter (a permission with no peer at all).
    #[error("The request must contain the parameter ipPermissions")]
    NoPermissions,
    /// EC2: InvalidPermission.Duplicate.
    #[error("the specified rule \"{0}\" already exists")]
    DuplicateRule(String),
    /// EC2: InvalidPermission.NotFound.
    #[error("The specified rule does not exist in this security group.")]
    RuleNotFound,
    /// EC2: RulesPerSecurityGroupLimitExceeded.
    #[error("The maximum number of rules per security group has been reached.")]
    TooManyRules,
    /// EC2: UnsupportedOperation (IPv6 and prefix lists: the lab's VPCs
    /// are IPv4 only).
    #[error("{0} is not supported by ec2lab")]
    Unsupported(&'static str),
}

impl SecurityGroupError {
    /// The EC2 error code.
    pub fn code(&self) -> &'static str {
        use SecurityGroupError as E;
        match self {
            E::DuplicateGroup { .. } => "InvalidGroup.Duplicate",
            E::ReservedName(_) => "InvalidGroup.Reserved",
            E::CannotDeleteDefault { .. } => "CannotDelete",
            E::InUse { .. } => "DependencyViolation",
            E::InvalidText { .. }
            | E::InvalidProtocol(_)
            | E::InvalidPorts { .. }
            | E::InvalidCidr(_)
            | E::PeerInAnotherVpc => "InvalidParameterValue",
            E::NoPermissions => "MissingParameter",
            E::DuplicateRule(_) => "InvalidPermission.Duplicate",
            E::RuleNotFound => "InvalidPermission.NotFound",
            E::TooManyRules => "RulesPerSecurityGroupLimitExceeded",
            E::Unsupported(_) => "UnsupportedOperation",
        }
    }
}

/// Checks a group name or description against EC2's VPC constraint: 1 to
/// 255 characters from `a-zA-Z0-9 ._-:/()#,@[]+=&;{}!$*`. Names must also
/// not look like group ids (`sg-…`), which EC2 reserves.
pub fn validate_text(field: &'static str, text: &str) -> Result<(), SecurityGroupError> {
    let invalid = |why| Err(SecurityGroupError::InvalidText { field, why });
    if text.is_empty() {
        return invalid("it must not be empty");
    }
    if text.chars().count() > MAX_NAME_LEN {
        return invalid("it must be at most 255 characters");
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || " ._-:/()#,@[]+=&;{}!$*".contains(c);
    if !text.chars().all(allowed) {
        return invalid("only a-z, A-Z, 0-9, spaces and ._-:/()#,@[]+=&;{}!$* are allowed");
    }
    if field == "GroupName" && text.starts_with("sg-") {
        return invalid("group names may not start with sg-");
    }
    Ok(())
}

/// How a request names a group: `GroupId`, or `GroupName`, which EC2
/// looks up in the default VPC only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupRef {
    Id(String),
    Name(String),
}

/// A rule's protocol after normalisation: EC2 shows `tcp`, `udp`, `icmp`
/// for 6, 17 and 1, `-1` for all traffic, and any other number as given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    All,
    Tcp,
    Udp,
    Icmp,
    /// Any other IP protocol number; ports do not apply to it.
    Number(u8),
}

impl Protocol {
    /// Reads EC2's `IpProtocol` (names case-insensitively, or numbers).
    pub fn parse(text: &str) -> Result<Protocol, SecurityGroupError> {
        let lower = text.to_ascii_lowercase();
        Ok(match lower.as_str() {
            ALL_PROTOCOLS => Protocol::All,
            "tcp" | "6" => Protocol::Tcp,
            "udp" | "17" => Protocol::Udp,
            "icmp" | "1" => Protocol::Icmp,
            "icmpv6" | "58" => return Err(SecurityGroupError::Unsupported("ICMPv6")),
            number => match number.parse::<u8>() {
                Ok(n) => Protocol::Number(n),
                Err(_) => return Err(SecurityGroupError::InvalidProtocol(text.to_string())),
            },
        })
    }

    /// The value EC2 shows (and ec2lab stores).
    pub fn name(self) -> String {
        match self {
            Protocol::All => ALL_PROTOCOLS.to_string(),
            Protocol::Tcp => "tcp".to_string(),
            Protocol::Udp => "udp".to_string(),
            Protocol::Icmp => "icmp".to_string(),
            Protocol::Number(n) => n.to_string(),
        }
    }
}

/// One permission as a request states it, before normalisation. A peer
/// group may be given by id or by name (`RulePeer::Group("web")`): names
/// cannot start with `sg-` ([`validate_text`]), so the two never clash,
/// and the repository resolves names in the group's own VPC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRequest {
    pub ip_protocol: String,
    pub from_port: Option<i64>,
    pub to_port: Option<i64>,
    pub peer: RulePeer,
    pub description: Option<String>,
}

/// The rule `request` asks for, normalised: protocol as EC2 shows it, the
/// port range (ICMP type and code) checked, ports dropped where EC2 drops
/// them (all traffic, protocols without ports).
pub fn normalise(
    direction: RuleDirection,
    request: &RuleRequest,
) -> Result<SecurityGroupRule, SecurityGroupError> {
    let protocol = Protocol::parse(&request.ip_protocol)?;
    if let Some(description) = &request.description {
        validate_text("Description", description)?;
    }
    let bad = |what, detail: String| SecurityGroupError::InvalidPorts {
        protocol: protocol.name(),
        what,
        detail,
    };
    let (from_port, to_port) = match protocol {
        Protocol::Tcp | Protocol::Udp => {
            let from = request
                .from_port
                .ok_or_else(|| bad("port range", "FromPort is required".into()))?;
            let to = request
                .to_port
                .ok_or_else(|| bad("port range", "ToPort is required".into()))?;
            if !(0..=65535).contains(&from) || !(0..=65535).contains(&to) || from > to {
                return Err(bad("port range", format!("{from}-{to}")));
            }
            (Some(from), Some(to))
        }
        Protocol::Icmp => {
            // FromPort is the ICMP type, ToPort the code; -1 is "any".
            let icmp_type = request.from_port.unwrap_or(-1);
            let code = request.to_port.unwrap_or(-1);
            if !(-1..=255).contains(&icmp_type) || !(-1..=255).contains(&code) {
                return Err(bad("ICMP type/code", format!("{icmp_type}/{code}")));
            }
            if icmp_type == -1 && code != -1 {
                return Err(bad(
                    "ICMP type/code",
                    "all ICMP types requires all ICMP codes (-1)".into(),
                ));
            }
            (Some(icmp_type), Some(code))
        }
        Protocol::All | Protocol::Number(_) => (None, None),
    };
    Ok(SecurityGroupRule {
        direction,
        ip_protocol: protocol.name(),
        // Checked above to be within -1..=65535.
        from_port: from_port.map(|p| p as i32),
        to_port: to_port.map(|p| p as i32),
        peer: request.peer.clone(),
        description: request.description.clone(),
    })
}

/// Whether two rules admit the same traffic: everything but the
/// description, which EC2 does not count when it looks for a duplicate.
pub fn same_rule(a: &SecurityGroupRule, b: &SecurityGroupRule) -> bool {
    a.direction == b.direction
        && a.ip_protocol == b.ip_protocol
        && a.from_port == b.from_port
        && a.to_port == b.to_port
        && a.peer == b.peer
}

/// EC2's way of naming a rule in InvalidPermission.Duplicate:
/// `peer: 0.0.0.0/0, TCP, from port: 22, to port: 22, ALLOW`.
pub fn describe_rule(rule: &SecurityGroupRule) -> String {
    let peer = match &rule.peer {
        RulePeer::Cidr(cidr) => cidr.to_string(),
        RulePeer::Group(id) => id.clone(),
    };
    let protocol = match rule.ip_protocol.as_str() {
        ALL_PROTOCOLS => "ALL".to_string(),
        other => other.to_ascii_uppercase(),
    };
    match (rule.from_port, rule.to_port) {
        (Some(from), Some(to)) => {
            format!("peer: {peer}, {protocol}, from port: {from}, to port: {to}, ALLOW")
        }
        _ => format!("peer: {peer}, {protocol}, ALLOW"),
    }
}

/// Checks that `new` may join `existing` (the group's current rules):
/// none already there or repeated, and the direction's count stays within
/// [`MAX_RULES_PER_DIRECTION`].
pub fn check_authorize<'a>(
    existing: impl IntoIterator<Item = &'a SecurityGroupRule> + Clone,
    new: &[SecurityGroupRule],
) -> Result<(), SecurityGroupError> {
    if new.is_empty() {
        return Err(SecurityGroupError::NoPermissions);
    }
    for (i, rule) in new.iter().enumerate() {
        let repeated = new[..i].iter().any(|r| same_rule(r, rule));
        if repeated || existing.clone().into_iter().any(|r| same_rule(r, rule)) {
            return Err(SecurityGroupError::DuplicateRule(describe_rule(rule)));
        }
    }
    for direction in RuleDirection::ALL {
        let count = |rules: &mut dyn Iterator<Item = &SecurityGroupRule>| {
            rules.filter(|r| r.direction == direction).count()
        };
        let total = count(&mut existing.clone().into_iter()) + count(&mut new.iter());
        if total > MAX_RULES_PER_DIRECTION {
            return Err(SecurityGroupError::TooManyRules);
        }
    }
    Ok(())
}

/// The positions in `existing` of the rules `wanted` names; every wanted
/// rule must exist (EC2 revokes all or nothing).
pub fn match_revoke(
    existing: &[&SecurityGroupRule],
    wanted: &[SecurityGroupRule],
) -> Result<Vec<usize>, SecurityGroupError> {
    if wanted.is_empty() {
        return Err(SecurityGroupError::NoPermissions);
    }
    let mut found = Vec::new();
    for rule in wanted {
        let at = existing
            .iter()
            .position(|r| same_rule(r, rule))
            .ok_or(SecurityGroupError::RuleNotFound)?;
        if !found.contains(&at) {
            found.push(at);
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::vpc::{Cidr, ANYWHERE};

    fn request(protocol: &str, from: Option<i64>, to: Option<i64>) -> RuleRequest {
        RuleRequest {
            ip_protocol: protocol.into(),
            from_port: from,
            to_port: to,
            peer: RulePeer::Cidr(ANYWHERE),
            description: None,
        }
    }

    fn ingress(protocol: &str, from: Option<i64>, to: Option<i64>) -> SecurityGroupRule {
        normalise(RuleDirection::Ingress, &request(protocol, from, to)).expect("valid rule")
    }

    #[test]
    fn protocols_are_shown_as_ec2_shows_them() {
        assert_eq!(ingress("6", Some(22), Some(22)).ip_protocol, "tcp");
        assert_eq!(ingress("TCP", Some(22), Some(22)).ip_protocol, "tcp");
        assert_eq!(ingress("17", Some(53), Some(53)).ip_protocol, "udp");
        assert_eq!(ingress("1", Some(8), Some(0)).ip_protocol, "icmp");
        assert_eq!(ingress("47", None, None).ip_protocol, "47");
        let all = ingress("-1", Some(1), Some(2));
        assert_eq!((all.ip_protocol.as_str(), all.from_port), ("-1", None));
        let gre = ingress("47", Some(1), Some(2));
        assert_eq!((gre.from_port, gre.to_port), (None, None));
        for bad in ["tcpx", "256", "", "-2", "tcp; drop"] {
            let err =
                normalise(RuleDirection::Ingress, &request(bad, Some(1), Some(1))).expect_err(bad);
            assert_eq!(err.code(), "InvalidParameterValue", "{bad}");
        }
        let v6 = normalise(RuleDirection::Ingress, &request("icmpv6", None, None));
        assert_eq!(v6.map_err(|e| e.code()), Err("UnsupportedOperation"));
    }

    #[test]
    fn port_ranges_and_icmp_type_code_are_checked() {
        for (from, to) in [
            (None, Some(22)),
            (Some(22), None),
            (Some(-1), Some(-1)),
            (Some(23), Some(22)),
            (Some(0), Some(65536)),
        ] {
            let err = normalise(RuleDirection::Ingress, &request("tcp", from, to))
                .expect_err("bad range");
            assert_eq!(err.code(), "InvalidParameterValue", "{from:?}-{to:?}");
        }
        let any = ingress("icmp", None, None);
        assert_eq!((any.from_port, any.to_port), (Some(-1), Some(-1)));
        let echo = ingress("icmp", Some(8), Some(-1));
        assert_eq!((echo.from_port, echo.to_port), (Some(8), Some(-1)));
        for (t, c) in [(-1, 0), (256, 0), (0, 256), (-2, -1)] {
            let err = normalise(RuleDirection::Ingress, &request("icmp", Some(t), Some(c)))
                .expect_err("bad icmp");
            assert_eq!(err.code(), "InvalidParameterValue", "{t}/{c}");
        }
    }

    #[test]
    fn duplicates_ignore_descriptions_and_are_named_as_ec2_names_them() {
        let ssh = ingress("tcp", Some(22), Some(22));
        let described = SecurityGroupRule {
            description: Some("ssh".into()),
            ..ssh.clone()
        };
        let err = check_authorize([&ssh], std::slice::from_ref(&described)).expect_err("dup");
        assert_eq!(err.code(), "InvalidPermission.Duplicate");
        assert_eq!(
            err.to_string(),
            "the specified rule \"peer: 0.0.0.0/0, TCP, from port: 22, to port: 22, ALLOW\" \
             already exists"
        );
        let twice = [ssh.clone(), described];
        assert!(check_authorize([], &twice).is_err());
        let egress = SecurityGroupRule {
            direction: RuleDirection::Egress,
            ..ssh.clone()
        };
        assert_eq!(check_authorize([&ssh], &[egress]), Ok(()));
        assert_eq!(
            check_authorize([&ssh], &[]).map_err(|e| e.code()),
            Err("MissingParameter")
        );
    }

    #[test]
    fn sixty_rules_per_direction_and_no_more() {
        let rule = |i: u8| SecurityGroupRule {
            peer: RulePeer::Cidr(Cidr::parse(&format!("10.0.{i}.0/24")).expect("cidr")),
            ..ingress("tcp", Some(22), Some(22))
        };
        let sixty: Vec<_> = (0..60).map(rule).collect();
        assert_eq!(check_authorize([], &sixty), Ok(()));
        let err = check_authorize(&sixty, &[rule(60)]).expect_err("61st");
        assert_eq!(err.code(), "RulesPerSecurityGroupLimitExceeded");
        let egress = SecurityGroupRule {
            direction: RuleDirection::Egress,
            ..rule(60)
        };
        assert_eq!(check_authorize(&sixty, &[egress]), Ok(()));
    }

    #[test]
    fn revoke_needs_every_named_rule_to_exist() {
        let ssh = ingress("tcp", Some(22), Some(22));
        let web = ingress("tcp", Some(80), Some(80));
        assert_eq!(
            match_revoke(&[&ssh, &web], std::slice::from_ref(&web)),
            Ok(vec![1])
        );
        let err = match_revoke(&[&ssh], &[ssh.clone(), web]).expect_err("missing");
        assert_eq!(err.code(), "InvalidPermission.NotFound");
    }

    #[test]
    fn names_and_descriptions_follow_ec2s_character_set() {
        assert_eq!(validate_text("GroupName", "WebSSHAccess"), Ok(()));
        assert_eq!(
            validate_text("GroupDescription", "web (80) & ssh: 22"),
            Ok(())
        );
        for bad in ["", "sg-123", "new\nline", "quote\"", "é", &"x".repeat(256)] {
            let err = validate_text("GroupName", bad).expect_err(bad);
            assert_eq!(err.code(), "InvalidParameterValue", "{bad:?}");
        }
    }
}

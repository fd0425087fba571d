//! The metadata service as a guest's curl meets it: every category and
//! listing, the IMDSv2 rules, and hostile bytes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ec2lab_vmm_api::metadata::{
    HttpTokens, InstanceMetadata, InterfaceMetadata, ManagedKey, MetadataOptions, PublicKey,
};

use super::*;

fn doc() -> InstanceMetadata {
    InstanceMetadata {
        instance_id: "i-0a1b2c3d4e5f60718".into(),
        ami_id: "ami-4155c7f576f55b4cd".into(),
        ami_launch_index: 0,
        instance_type: "t2.micro".into(),
        reservation_id: "r-0123456789abcdef0".into(),
        account_id: "000000000000".into(),
        region: "us-east-1".into(),
        availability_zone: "us-east-1a".into(),
        availability_zone_id: "use1-az1".into(),
        architecture: "x86_64".into(),
        pending_time: "2026-12-03T06:10:24Z".into(),
        local_hostname: "ip-172-31-0-5.ec2.internal".into(),
        local_ipv4: "172.31.0.5".into(),
        mac: "02:aa:bb:cc:dd:ee".into(),
        public_ipv4: Some("198.51.100.3".into()),
        public_hostname: Some("ec2-198-51-100-3.compute-1.amazonaws.com".into()),
        security_groups: vec!["WebSSHAccess".into(), "default".into()],
        public_keys: vec![PublicKey {
            name: "us-east-kp".into(),
            openssh: "ssh-ed25519 AAAAC3Nza us-east-kp".into(),
        }],
        managed_keys: Vec::new(),
        user_data: Some(b"#!/bin/sh\necho hello\n".to_vec()),
        tags: BTreeMap::from([
            ("Name".into(), "web".into()),
            ("a/b".into(), "unservable".into()),
        ]),
        interfaces: vec![InterfaceMetadata {
            mac: "02:aa:bb:cc:dd:ee".into(),
            device_number: 0,
            interface_id: "eni-0123456789abcdef0".into(),
            local_hostname: "ip-172-31-0-5.ec2.internal".into(),
            local_ipv4s: vec!["172.31.0.5".into()],
            public_ipv4: Some("198.51.100.3".into()),
            public_hostname: Some("ec2-198-51-100-3.compute-1.amazonaws.com".into()),
            security_group_ids: vec!["sg-1".into(), "sg-2".into()],
            security_groups: vec!["WebSSHAccess".into(), "default".into()],
            subnet_id: "subnet-1".into(),
            subnet_ipv4_cidr_block: "172.31.0.0/20".into(),
            vpc_id: "vpc-1".into(),
            vpc_ipv4_cidr_blocks: vec!["172.31.0.0/16".into()],
        }],
        options: MetadataOptions::default(),
    }
}

struct Client {
    imds: Imds,
    t0: Instant,
}

impl Client {
    fn new(doc: InstanceMetadata) -> Self {
        let t0 = Instant::now();
        Client {
            imds: Imds::new(doc, t0).expect("test input"),
            t0,
        }
    }

    fn send_at(&self, raw: &[u8], after: Duration) -> Response {
        match self.imds.serve(raw, self.t0 + after) {
            Served::Reply {
                response, consumed, ..
            } => {
                assert_eq!(consumed, raw.len());
                response
            }
            other => panic!("no reply: {other:?}"),
        }
    }

    fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.get_at(path, token, Duration::ZERO)
    }

    fn get_at(&self, path: &str, token: Option<&str>, after: Duration) -> Response {
        let token = token
            .map(|t| format!("X-aws-ec2-metadata-token: {t}\r\n"))
            .unwrap_or_default();
        let raw = format!("GET {path} HTTP/1.1\r\nHost: 169.254.169.254\r\n{token}\r\n");
        self.send_at(raw.as_bytes(), after)
    }

    fn text(&self, path: &str) -> String {
        let response = self.get(path, None);
        assert_eq!(response.status, 200, "{path}");
        String::from_utf8(response.body).expect("test input")
    }

    fn token(&self, ttl: &str) -> Response {
        let raw = format!(
            "PUT /latest/api/token HTTP/1.1\r\nHost: 169.254.169.254\r\n\
             X-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n\r\n"
        );
        self.send_at(raw.as_bytes(), Duration::ZERO)
    }
}

#[test]
fn every_category_answers_what_ec2_would() {
    let c = Client::new(doc());
    let md = "/latest/meta-data/";
    for (path, want) in [
        ("ami-id", "ami-4155c7f576f55b4cd"),
        ("ami-launch-index", "0"),
        ("ami-manifest-path", "(unknown)"),
        ("block-device-mapping/root", "/dev/xvda"),
        ("hostname", "ip-172-31-0-5.ec2.internal"),
        ("instance-action", "none"),
        ("instance-id", "i-0a1b2c3d4e5f60718"),
        ("instance-life-cycle", "on-demand"),
        ("instance-type", "t2.micro"),
        ("local-hostname", "ip-172-31-0-5.ec2.internal"),
        ("local-ipv4", "172.31.0.5"),
        ("mac", "02:aa:bb:cc:dd:ee"),
        ("placement/availability-zone", "us-east-1a"),
        ("placement/availability-zone-id", "use1-az1"),
        ("placement/region", "us-east-1"),
        (
            "public-hostname",
            "ec2-198-51-100-3.compute-1.amazonaws.com",
        ),
        ("public-ipv4", "198.51.100.3"),
        (
            "public-keys/0/openssh-key",
            "ssh-ed25519 AAAAC3Nza us-east-kp",
        ),
        ("reservation-id", "r-0123456789abcdef0"),
        ("security-groups", "WebSSHAccess\ndefault"),
        ("services/domain", "amazonaws.com"),
        ("services/partition", "aws"),
    ] {
        assert_eq!(c.text(&format!("{md}{path}")), want, "{path}");
    }
    let eni = "/latest/meta-data/network/interfaces/macs/02:aa:bb:cc:dd:ee/";
    for (path, want) in [
        ("device-number", "0"),
        ("interface-id", "eni-0123456789abcdef0"),
        ("local-ipv4s", "172.31.0.5"),
        ("owner-id", "000000000000"),
        ("public-ipv4s", "198.51.100.3"),
        ("ipv4-associations/198.51.100.3", "172.31.0.5"),
        ("security-group-ids", "sg-1\nsg-2"),
        ("subnet-ipv4-cidr-block", "172.31.0.0/20"),
        ("vpc-id", "vpc-1"),
        ("vpc-ipv4-cidr-block", "172.31.0.0/16"),
    ] {
        assert_eq!(c.text(&format!("{eni}{path}")), want, "{path}");
    }
    assert_eq!(c.text("/latest/user-data"), "#!/bin/sh\necho hello\n");
    let identity: serde_json::Value =
        serde_json::from_str(&c.text("/latest/dynamic/instance-identity/document"))
            .expect("test input");
    assert_eq!(identity["instanceId"], "i-0a1b2c3d4e5f60718");
    assert_eq!(identity["privateIp"], "172.31.0.5");
    assert_eq!(identity["availabilityZone"], "us-east-1a");
    assert_eq!(identity["version"], "2017-09-30");
    assert!(identity["kernelId"].is_null());
    // Older API versions answer the same; unknown ones do not exist.
    assert_eq!(
        c.text("/2009-04-04/meta-data/instance-id"),
        "i-0a1b2c3d4e5f60718"
    );
    assert_eq!(c.get("/2030-01-01/meta-data/instance-id", None).status, 404);
}

#[test]
fn listings_are_ec2s_with_directories_marked_and_no_final_newline() {
    let c = Client::new(doc());
    let root = c.text("/");
    assert!(
        root.starts_with("1.0\n2007-01-19\n") && root.ends_with("\nlatest"),
        "{root}"
    );
    assert_eq!(c.text("/latest/"), "dynamic\nmeta-data\nuser-data");
    assert_eq!(c.text("/latest"), "dynamic\nmeta-data\nuser-data");
    let md = c.text("/latest/meta-data/");
    assert_eq!(md, c.text("/latest/meta-data"), "with or without the slash");
    let lines: Vec<&str> = md.lines().collect();
    for want in [
        "ami-id",
        "block-device-mapping/",
        "instance-id",
        "network/",
        "placement/",
        "public-ipv4",
        "public-keys/",
        "services/",
    ] {
        assert!(lines.contains(&want), "{want} missing from {md}");
    }
    assert!(!md.ends_with('\n'));
    assert!(!lines.contains(&"tags/"), "tags only when enabled");
    assert_eq!(c.text("/latest/meta-data/public-keys/"), "0=us-east-kp");
    assert_eq!(c.text("/latest/meta-data/public-keys/0/"), "openssh-key");
    assert_eq!(
        c.text("/latest/meta-data/network/interfaces/macs/"),
        "02:aa:bb:cc:dd:ee/"
    );
    assert_eq!(
        c.text("/latest/meta-data/placement/"),
        "availability-zone\navailability-zone-id\nregion"
    );
    assert_eq!(c.text("/latest/dynamic/"), "instance-identity/");
}

#[test]
fn what_an_instance_lacks_is_a_404_as_on_ec2() {
    let mut bare = doc();
    bare.public_ipv4 = None;
    bare.public_hostname = None;
    bare.public_keys.clear();
    bare.user_data = None;
    let c = Client::new(bare);
    for path in [
        "/latest/meta-data/public-ipv4",
        "/latest/meta-data/public-hostname",
        "/latest/meta-data/public-keys/",
        "/latest/user-data",
        "/latest/meta-data/nonsense",
        "/latest/meta-data/instance-id/extra",
        "/latest/meta-data/tags/instance/Name",
    ] {
        let response = c.get(path, None);
        assert_eq!(response.status, 404, "{path}");
        assert!(String::from_utf8_lossy(&response.body).contains("404 - Not Found"));
    }
    assert_eq!(c.text("/latest/"), "dynamic\nmeta-data");
}

#[test]
fn tags_are_served_only_when_enabled_and_only_keys_that_fit_a_path() {
    let mut with_tags = doc();
    with_tags.options.instance_metadata_tags = true;
    let c = Client::new(with_tags);
    assert_eq!(c.text("/latest/meta-data/tags/instance/"), "Name");
    assert_eq!(c.text("/latest/meta-data/tags/instance/Name"), "web");
}

#[test]
fn a_token_is_issued_for_1_to_21600_seconds_and_leaves_with_the_hop_limit_as_ttl() {
    let mut hops = doc();
    hops.options.hop_limit = 2;
    let c = Client::new(hops);
    let response = c.token("21600");
    assert_eq!(response.status, 200);
    assert_eq!(response.ip_ttl, Some(2));
    assert!(response
        .headers
        .contains(&("X-Aws-Ec2-Metadata-Token-Ttl-Seconds", "21600".into())));
    assert_eq!(response.body.len(), 56);
    for bad in ["0", "21601", "abc"] {
        assert_eq!(c.token(bad).status, 400, "{bad}");
    }
    let missing = b"PUT /latest/api/token HTTP/1.1\r\nHost: x\r\n\r\n";
    assert_eq!(c.send_at(missing, Duration::ZERO).status, 400);
    // Through a proxy: refused.
    let proxied = b"PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 10.0.0.9\r\n\
                    X-aws-ec2-metadata-token-ttl-seconds: 60\r\n\r\n";
    assert_eq!(c.send_at(proxied, Duration::ZERO).status, 403);
}

#[test]
fn with_tokens_required_v1_is_refused_and_v2_works_until_the_token_expires() {
    let mut required = doc();
    required.options.http_tokens = HttpTokens::Required;
    let c = Client::new(required);
    assert_eq!(c.get("/latest/meta-data/instance-id", None).status, 401);
    assert_eq!(c.get("/", None).status, 401);
    let token = String::from_utf8(c.token("60").body).expect("test input");
    let ok = c.get(
        "/latest/meta-data/placement/availability-zone",
        Some(&token),
    );
    assert_eq!(
        (ok.status, ok.body.as_slice()),
        (200, b"us-east-1a".as_slice())
    );
    let late = c.get_at(
        "/latest/meta-data/instance-id",
        Some(&token),
        Duration::from_secs(60),
    );
    assert_eq!(late.status, 401);
}

#[test]
fn a_bad_token_is_refused_even_while_tokens_are_optional() {
    let c = Client::new(doc());
    assert_eq!(c.get("/latest/meta-data/instance-id", None).status, 200);
    let forged = "AQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    assert_eq!(
        c.get("/latest/meta-data/instance-id", Some(forged)).status,
        401
    );
    // A token from another instance's service is no better.
    let other = Client::new(InstanceMetadata {
        instance_id: "i-other".into(),
        ..doc()
    });
    let theirs = String::from_utf8(other.token("60").body).expect("test input");
    assert_eq!(
        c.get("/latest/meta-data/instance-id", Some(&theirs)).status,
        401
    );
}

#[test]
fn revoking_tokens_ends_every_session() {
    let mut c = Client::new(doc());
    let token = String::from_utf8(c.token("600").body).expect("test input");
    assert_eq!(
        c.get("/latest/meta-data/instance-id", Some(&token)).status,
        200
    );
    c.imds.revoke_tokens().expect("test input");
    assert_eq!(
        c.get("/latest/meta-data/instance-id", Some(&token)).status,
        401
    );
}

#[test]
fn other_methods_get_405_with_what_is_allowed() {
    let c = Client::new(doc());
    let post = c.send_at(b"POST /latest/meta-data/ HTTP/1.1\r\n\r\n", Duration::ZERO);
    assert_eq!(post.status, 405);
    assert!(post.headers.contains(&("Allow", "GET, HEAD".into())));
    let put = c.send_at(b"PUT /latest/meta-data/ HTTP/1.1\r\n\r\n", Duration::ZERO);
    assert_eq!(put.status, 405);
    let get_token = c.get("/latest/api/token", None);
    assert_eq!(get_token.status, 405);
    assert!(get_token.headers.contains(&("Allow", "PUT".into())));
}

#[test]
fn head_answers_without_a_body_and_connection_close_is_honoured() {
    let c = Client::new(doc());
    let raw = b"HEAD /latest/meta-data/instance-id HTTP/1.1\r\nConnection: close\r\n\r\n";
    let Served::Reply {
        response,
        head_only,
        ..
    } = c.imds.serve(raw, c.t0)
    else {
        panic!("no reply");
    };
    assert!(head_only && response.close);
    let bytes = response.to_bytes(head_only);
    assert!(bytes.ends_with(b"Content-Length: 19\r\nConnection: close\r\nServer: EC2ws\r\n\r\n"));
}

#[test]
fn a_disabled_endpoint_answers_nothing() {
    let mut off = doc();
    off.options.http_endpoint = false;
    let mut c = Client::new(off);
    let raw = b"GET /latest/meta-data/instance-id HTTP/1.1\r\n\r\n";
    assert_eq!(c.imds.serve(raw, c.t0), Served::Silent);
    // Re-enabled by the control plane: answers again.
    c.imds.update(doc());
    assert_eq!(c.send_at(raw, Duration::ZERO).status, 200);
}

#[test]
fn an_update_is_served_at_once() {
    let mut c = Client::new(doc());
    let mut moved = doc();
    moved.public_ipv4 = Some("198.51.100.77".into());
    c.imds.update(moved);
    assert_eq!(c.text("/latest/meta-data/public-ipv4"), "198.51.100.77");
    assert_eq!(
        c.imds.document().public_ipv4.as_deref(),
        Some("198.51.100.77")
    );
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::SystemTime::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs()
}

#[test]
fn instance_connect_keys_are_served_per_user_until_they_expire() {
    let now = unix_now();
    let key = |user: &str, line: &str, ttl: u64| ManagedKey {
        user: user.into(),
        openssh: line.into(),
        expires_unix: now + ttl,
    };
    let mut with_keys = doc();
    with_keys.managed_keys = vec![
        key("ec2-user", "ssh-ed25519 AAAAfirst one", 60),
        key("ec2-user", "ssh-ed25519 AAAAsecond two\n", 120),
        key("admin", "ssh-ed25519 AAAAadmin", 60),
        key("../x", "ssh-ed25519 AAAAbad", 60),
        key("old", "ssh-ed25519 AAAAold", 0),
    ];
    let c = Client::new(with_keys);
    assert!(c.text("/latest/meta-data/").contains("managed-ssh-keys/"));
    assert_eq!(
        c.text("/latest/meta-data/managed-ssh-keys/active-keys/"),
        "admin\nec2-user"
    );
    // The agent asks with a trailing slash, as EC2's scripts do.
    assert_eq!(
        c.text("/latest/meta-data/managed-ssh-keys/active-keys/ec2-user/"),
        "ssh-ed25519 AAAAfirst one\nssh-ed25519 AAAAsecond two"
    );
    let path = "/latest/meta-data/managed-ssh-keys/active-keys/ec2-user/";
    let at = |secs| c.get_at(path, None, Duration::from_secs(secs));
    assert_eq!(
        at(61).body,
        b"ssh-ed25519 AAAAsecond two",
        "the first key outlived its 60 s"
    );
    assert_eq!(at(121).status, 404, "every key expired");
    let gone = c.get_at(
        "/latest/meta-data/managed-ssh-keys/active-keys/admin",
        None,
        Duration::from_secs(61),
    );
    assert_eq!(gone.status, 404);
}

#[test]
fn without_instance_connect_keys_there_is_no_managed_keys_category() {
    let mut expired = doc();
    expired.managed_keys = vec![ManagedKey {
        user: "ec2-user".into(),
        openssh: "ssh-ed25519 AAAAold".into(),
        expires_unix: unix_now().saturating_sub(1),
    }];
    for d in [doc(), expired] {
        let c = Client::new(d);
        assert!(!c.text("/latest/meta-data/").contains("managed-ssh-keys"));
        let r = c.get(
            "/latest/meta-data/managed-ssh-keys/active-keys/ec2-user/",
            None,
        );
        assert_eq!(r.status, 404);
    }
}

#[test]
fn partial_requests_wait_and_garbage_gets_a_400_that_closes() {
    let c = Client::new(doc());
    assert_eq!(c.imds.serve(b"GET /latest/meta", c.t0), Served::Incomplete);
    let Served::Reply {
        response, consumed, ..
    } = c.imds.serve(b"\x16\x03\x01\x02\x00 not http\r\n\r\n", c.t0)
    else {
        panic!("no reply");
    };
    assert_eq!((response.status, response.close, consumed), (400, true, 18));
}

/// Random bytes, random cuts of valid requests and header soup: every
/// input ends as Incomplete or as an answer, never as a panic, and an
/// answer never claims more bytes than it was given.
#[test]
fn fuzzed_requests_never_panic() {
    let mut with_tokens = doc();
    with_tokens.options.http_tokens = HttpTokens::Required;
    let c = Client::new(with_tokens);
    let mut rand = crate::fuzzing::Rand::new(0x9e37_79b9_7f4a_7c15u64);
    let mut next = move || rand.next();
    let seeds: [&[u8]; 3] = [
        b"GET /latest/meta-data/network/interfaces/macs/02:aa:bb:cc:dd:ee/ HTTP/1.1\r\nHost: a\r\n\r\n",
        b"PUT /latest/api/token HTTP/1.1\r\nX-aws-ec2-metadata-token-ttl-seconds: 5\r\nContent-Length: 2\r\n\r\nab",
        b"GET /latest/user-data HTTP/1.1\r\nX-aws-ec2-metadata-token: AQAAAAAA\r\n\r\n",
    ];
    for round in 0..crate::fuzzing::iterations() as usize {
        let seed = seeds[round % seeds.len()];
        let mut input = seed.to_vec();
        match next() % 4 {
            0 => input.truncate((next() as usize) % (seed.len() + 1)),
            1 => {
                for _ in 0..(next() % 8) {
                    let at = (next() as usize) % input.len();
                    input[at] = next() as u8;
                }
            }
            2 => input = (0..(next() % 300)).map(|_| next() as u8).collect(),
            _ => input.extend((0..(next() % 9000)).map(|_| b"a:\r\n /%"[(next() % 7) as usize])),
        }
        match c.imds.serve(&input, c.t0) {
            Served::Incomplete => assert!(input.len() <= http::MAX_HEAD + http::MAX_BODY + 200),
            Served::Reply { consumed, .. } => assert!(consumed <= input.len()),
            Served::Silent => panic!("the endpoint is enabled"),
        }
    }
}

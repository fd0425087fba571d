//! The availability zones of the lab's region: `{region}a`, `b`, `c`, with
//! AWS's zone ids (`use1-az1`). They are labels for placement and for the
//! default VPC's subnets; every zone is this host.

/// Zone letters of the configured region.
pub const ZONE_LETTERS: &[char] = &['a', 'b', 'c'];

/// One zone of the configured region.
pub struct Zone {
    pub name: String,
    pub id: String,
}

pub fn zones(region: &str) -> Vec<Zone> {
    let prefix = zone_id_prefix(region);
    ZONE_LETTERS
        .iter()
        .enumerate()
        .map(|(i, letter)| Zone {
            name: format!("{region}{letter}"),
            id: format!("{prefix}-az{}", i + 1),
        })
        .collect()
}

/// AWS's short region code used in zone ids: `us-east-1` → `use1`,
/// `ap-southeast-2` → `apse2`, `eu-central-1` → `euc1`.
pub fn zone_id_prefix(region: &str) -> String {
    region
        .split('-')
        .enumerate()
        .map(|(i, part)| match part {
            _ if i == 0 => part.to_owned(),
            "northeast" => "ne".to_owned(),
            "northwest" => "nw".to_owned(),
            "southeast" => "se".to_owned(),
            "southwest" => "sw".to_owned(),
            _ if part.chars().all(|c| c.is_ascii_digit()) => part.to_owned(),
            _ => part.chars().take(1).collect(),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zone_ids_use_aws_region_codes() {
        assert_eq!(zone_id_prefix("us-east-1"), "use1");
        assert_eq!(zone_id_prefix("ap-southeast-2"), "apse2");
        assert_eq!(zone_id_prefix("eu-central-1"), "euc1");
        assert_eq!(zone_id_prefix("ap-northeast-1"), "apne1");
        let z = zones("us-east-1");
        assert_eq!(z[2].name, "us-east-1c");
        assert_eq!(z[2].id, "use1-az3");
    }
}

//! The instance types ec2lab offers, with AWS's published sizes.
//!
//! Lives in the API layer until the domain (`model/`) grows its own table;
//! then this moves there unchanged and the API keeps only rendering.
//! Values are AWS's for the real types (vCPUs, cores, memory, clock,
//! network limits); `lab.*` are ec2lab's own tiny types for tests. Only
//! x86_64 is listed because ec2lab runs x86_64 guests only.

/// Which hypervisor EC2 reports for the type (ec2lab's VMM is KVM-based
/// either way; `xen` only keeps old types looking as they do on AWS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hypervisor {
    Nitro,
    Xen,
}

impl Hypervisor {
    /// The model's spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Nitro => "nitro",
            Self::Xen => "xen",
        }
    }
}

/// One instance type's published specification.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceTypeSpec {
    pub name: &'static str,
    pub vcpus: u32,
    pub cores: u32,
    pub threads_per_core: u32,
    pub memory_mib: u64,
    pub hypervisor: Hypervisor,
    pub burstable: bool,
    pub free_tier: bool,
    pub clock_ghz: f64,
    pub network_performance: &'static str,
    pub max_network_interfaces: u32,
    pub ipv4_per_interface: u32,
    /// ENA (`required`) on Nitro types, none on the Xen-era t2.
    pub ena: &'static str,
}

const fn t2(
    name: &'static str,
    vcpus: u32,
    memory_mib: u64,
    enis: u32,
    ipv4: u32,
    clock_ghz: f64,
    net: &'static str,
) -> InstanceTypeSpec {
    InstanceTypeSpec {
        name,
        vcpus,
        cores: vcpus,
        threads_per_core: 1,
        memory_mib,
        hypervisor: Hypervisor::Xen,
        burstable: true,
        free_tier: false,
        clock_ghz,
        network_performance: net,
        max_network_interfaces: enis,
        ipv4_per_interface: ipv4,
        ena: "unsupported",
    }
}

const fn nitro(
    name: &'static str,
    vcpus: u32,
    memory_mib: u64,
    enis: u32,
    ipv4: u32,
    clock_ghz: f64,
    net: &'static str,
) -> InstanceTypeSpec {
    InstanceTypeSpec {
        name,
        vcpus,
        cores: vcpus / 2,
        threads_per_core: 2,
        memory_mib,
        hypervisor: Hypervisor::Nitro,
        burstable: false,
        free_tier: false,
        clock_ghz,
        network_performance: net,
        max_network_interfaces: enis,
        ipv4_per_interface: ipv4,
        ena: "required",
    }
}

/// The burstable Nitro family: 2.5 GHz, "Up to 5 Gigabit".
const fn t3(
    name: &'static str,
    vcpus: u32,
    memory_mib: u64,
    enis: u32,
    ipv4: u32,
) -> InstanceTypeSpec {
    InstanceTypeSpec {
        burstable: true,
        ..nitro(name, vcpus, memory_mib, enis, ipv4, 2.5, "Up to 5 Gigabit")
    }
}

const fn lab(name: &'static str, memory_mib: u64) -> InstanceTypeSpec {
    InstanceTypeSpec {
        name,
        vcpus: 1,
        cores: 1,
        threads_per_core: 1,
        memory_mib,
        hypervisor: Hypervisor::Nitro,
        burstable: false,
        free_tier: false,
        clock_ghz: 2.5,
        network_performance: "Low",
        max_network_interfaces: 2,
        ipv4_per_interface: 2,
        ena: "required",
    }
}

const T2_MICRO: InstanceTypeSpec = InstanceTypeSpec {
    free_tier: true,
    ..t2("t2.micro", 1, 1024, 2, 2, 2.5, "Low to Moderate")
};
const T3_MICRO: InstanceTypeSpec = InstanceTypeSpec {
    free_tier: true,
    ..t3("t3.micro", 2, 1024, 2, 2)
};

/// Every instance type, in the order DescribeInstanceTypes lists them.
pub const INSTANCE_TYPES: &[InstanceTypeSpec] = &[
    lab("lab.nano", 128),
    lab("lab.micro", 256),
    t2("t2.nano", 1, 512, 2, 2, 2.4, "Low to Moderate"),
    T2_MICRO,
    t2("t2.small", 1, 2048, 3, 4, 2.5, "Low to Moderate"),
    t2("t2.medium", 2, 4096, 3, 6, 2.3, "Low to Moderate"),
    t2("t2.large", 2, 8192, 3, 12, 2.3, "Low to Moderate"),
    t2("t2.xlarge", 4, 16384, 3, 15, 2.3, "Moderate"),
    t3("t3.nano", 2, 512, 2, 2),
    T3_MICRO,
    t3("t3.small", 2, 2048, 3, 4),
    t3("t3.medium", 2, 4096, 3, 6),
    t3("t3.large", 2, 8192, 3, 12),
    t3("t3.xlarge", 4, 16384, 4, 15),
    nitro("m5.large", 2, 8192, 3, 10, 3.1, "Up to 10 Gigabit"),
    nitro("m5.xlarge", 4, 16384, 4, 15, 3.1, "Up to 10 Gigabit"),
    nitro("c5.large", 2, 4096, 3, 10, 3.4, "Up to 10 Gigabit"),
];

/// The spec of a type by name.
pub fn find(name: &str) -> Option<&'static InstanceTypeSpec> {
    INSTANCE_TYPES.iter().find(|t| t.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_vcpus_are_cores_times_threads() {
        for (i, t) in INSTANCE_TYPES.iter().enumerate() {
            assert_eq!(t.vcpus, t.cores * t.threads_per_core, "{}", t.name);
            assert!(
                INSTANCE_TYPES[..i].iter().all(|o| o.name != t.name),
                "{}",
                t.name
            );
        }
    }

    #[test]
    fn lab_types_are_tiny() {
        let nano = find("lab.nano").expect("lab.nano");
        assert_eq!((nano.vcpus, nano.memory_mib), (1, 128));
        let micro = find("lab.micro").expect("lab.micro");
        assert_eq!((micro.vcpus, micro.memory_mib), (1, 256));
        assert_eq!(find("t2.micro").map(|t| t.memory_mib), Some(1024));
    }
}

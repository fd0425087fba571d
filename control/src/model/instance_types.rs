//! The instance types ec2lab offers and the host capacity check behind
//! `InsufficientInstanceCapacity`.
//!
//! The numbers are AWS's published ones for the real types (vCPUs, cores,
//! memory, clock, network limits), so a script written against EC2 sizes its
//! guests the same here; `lab.*` are ours, small enough that tests can boot
//! many guests on a laptop. Only x86_64 is listed because ec2lab runs x86_64
//! guests only. One table serves both the capacity check and
//! DescribeInstanceTypes, so they cannot disagree.

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

/// One instance type: what a guest of this type gets, and AWS's published
/// specification that DescribeInstanceTypes reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceType {
    /// EC2's name, e.g. `t3.micro`.
    pub name: &'static str,
    /// Virtual CPUs given to the guest.
    pub vcpus: u32,
    pub cores: u32,
    pub threads_per_core: u32,
    /// Guest memory in MiB.
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
) -> InstanceType {
    InstanceType {
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
) -> InstanceType {
    InstanceType {
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
const fn t3(name: &'static str, vcpus: u32, memory_mib: u64, enis: u32, ipv4: u32) -> InstanceType {
    InstanceType {
        burstable: true,
        ..nitro(name, vcpus, memory_mib, enis, ipv4, 2.5, "Up to 5 Gigabit")
    }
}

const fn lab(name: &'static str, memory_mib: u64) -> InstanceType {
    InstanceType {
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

const T2_MICRO: InstanceType = InstanceType {
    free_tier: true,
    ..t2("t2.micro", 1, 1024, 2, 2, 2.5, "Low to Moderate")
};
const T3_MICRO: InstanceType = InstanceType {
    free_tier: true,
    ..t3("t3.micro", 2, 1024, 2, 2)
};

/// Every instance type, in the order DescribeInstanceTypes lists them.
pub const INSTANCE_TYPES: &[InstanceType] = &[
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

/// The type we launch when the request names none: EC2 defaults to
/// `m1.small`, which we do not model, so we pick the closest small type.
pub const FALLBACK_INSTANCE_TYPE: &str = "t2.micro";

/// The instance type called `name`, if ec2lab offers it. Names are
/// case-sensitive, as in EC2.
pub fn lookup(name: &str) -> Option<&'static InstanceType> {
    INSTANCE_TYPES.iter().find(|t| t.name == name)
}

/// What the host has to give.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostResources {
    /// Online host CPUs.
    pub cpus: u32,
    /// Host memory in MiB (MemTotal).
    pub memory_mib: u64,
}

/// How much of the host guests may use.
///
/// Memory is never overcommitted: guest RAM is touched by the guest kernel
/// and a host that swaps or OOM-kills a VMM loses an instance, which EC2
/// never does. So the sum of guest memory plus a per-VMM overhead must stay
/// below host memory minus a reserve for the host itself and the daemon.
///
/// vCPUs are overcommitted, by default 4× the host's CPUs: lab guests idle
/// most of the time, and a vCPU that has nothing to do costs a sleeping
/// thread. Past 4× a busy lab becomes too slow to be useful (timeouts in
/// guests, clients giving up), which is worse than a clear
/// InsufficientInstanceCapacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapacityPolicy {
    /// vCPUs allowed per host CPU.
    pub vcpu_overcommit: u32,
    /// Memory each VMM process needs beyond guest RAM (page tables, device
    /// queues, the IMDS stack, the process itself).
    pub per_guest_overhead_mib: u64,
    /// Memory kept for the host.
    pub host_reserve_mib: u64,
}

impl Default for CapacityPolicy {
    fn default() -> Self {
        CapacityPolicy {
            vcpu_overcommit: 4,
            per_guest_overhead_mib: 32,
            host_reserve_mib: 512,
        }
    }
}

/// Why a launch does not fit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CapacityError {
    #[error(
        "Insufficient capacity: {count} x {instance_type} need {needed_mib} MiB of memory, \
         {available_mib} MiB are free"
    )]
    Memory {
        instance_type: &'static str,
        count: u32,
        needed_mib: u64,
        available_mib: u64,
    },
    #[error(
        "Insufficient capacity: {count} x {instance_type} need {needed} vCPUs, \
         {available} are free"
    )]
    Vcpus {
        instance_type: &'static str,
        count: u32,
        needed: u64,
        available: u64,
    },
}

impl CapacityPolicy {
    /// Memory guests may use in total, overhead included.
    fn memory_budget_mib(&self, host: HostResources) -> u64 {
        host.memory_mib.saturating_sub(self.host_reserve_mib)
    }

    fn vcpu_budget(&self, host: HostResources) -> u64 {
        u64::from(host.cpus) * u64::from(self.vcpu_overcommit)
    }

    fn footprint_mib(&self, t: &InstanceType) -> u64 {
        t.memory_mib + self.per_guest_overhead_mib
    }

    /// Free memory and vCPUs once `running` (the types of every instance
    /// that holds resources: pending, running, stopping) are accounted for.
    fn free(&self, host: HostResources, running: &[&InstanceType]) -> (u64, u64) {
        let used_mib: u64 = running.iter().map(|t| self.footprint_mib(t)).sum();
        let used_vcpus: u64 = running.iter().map(|t| u64::from(t.vcpus)).sum();
        (
            self.memory_budget_mib(host).saturating_sub(used_mib),
            self.vcpu_budget(host).saturating_sub(used_vcpus),
        )
    }

    /// Whether `count` more instances of `candidate` fit next to `running`.
    pub fn check(
        &self,
        host: HostResources,
        running: &[&InstanceType],
        candidate: &'static InstanceType,
        count: u32,
    ) -> Result<(), CapacityError> {
        let (free_mib, free_vcpus) = self.free(host, running);
        let needed_mib = self
            .footprint_mib(candidate)
            .saturating_mul(u64::from(count));
        if needed_mib > free_mib {
            return Err(CapacityError::Memory {
                instance_type: candidate.name,
                count,
                needed_mib,
                available_mib: free_mib,
            });
        }
        let needed = u64::from(candidate.vcpus) * u64::from(count);
        if needed > free_vcpus {
            return Err(CapacityError::Vcpus {
                instance_type: candidate.name,
                count,
                needed,
                available: free_vcpus,
            });
        }
        Ok(())
    }

    /// How many instances of `candidate` fit next to `running`: RunInstances
    /// launches as many as fit between MinCount and MaxCount.
    pub fn how_many_fit(
        &self,
        host: HostResources,
        running: &[&InstanceType],
        candidate: &InstanceType,
    ) -> u64 {
        let (free_mib, free_vcpus) = self.free(host, running);
        let by_memory = free_mib / self.footprint_mib(candidate).max(1);
        let by_vcpus = free_vcpus / u64::from(candidate.vcpus.max(1));
        by_memory.min(by_vcpus)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ty(name: &str) -> &'static InstanceType {
        lookup(name).unwrap_or_else(|| panic!("{name} is in the table"))
    }

    #[test]
    fn table_has_the_documented_sizes() {
        assert_eq!(INSTANCE_TYPES.len(), 17);
        assert_eq!(ty("t2.nano").vcpus, 1);
        assert_eq!(ty("t2.nano").memory_mib, 512);
        assert_eq!(ty("t3.nano").vcpus, 2);
        assert_eq!(ty("m5.xlarge").memory_mib, 16384);
        assert_eq!(ty("c5.large").memory_mib, 4096);
        assert_eq!(ty("lab.nano").memory_mib, 128);
        assert_eq!(ty("lab.micro").memory_mib, 256);
    }

    #[test]
    fn names_are_unique_and_lookup_is_case_sensitive() {
        for (i, a) in INSTANCE_TYPES.iter().enumerate() {
            assert!(INSTANCE_TYPES[i + 1..].iter().all(|b| b.name != a.name));
        }
        assert!(lookup("T2.micro").is_none());
        assert!(lookup("m1.small").is_none());
        assert!(lookup(FALLBACK_INSTANCE_TYPE).is_some());
    }

    #[test]
    fn capacity_counts_overhead_and_reserve() {
        let host = HostResources {
            cpus: 2,
            memory_mib: 512 + 2 * (256 + 32),
        };
        let policy = CapacityPolicy::default();
        let micro = ty("lab.micro");
        assert!(policy.check(host, &[], micro, 2).is_ok());
        assert!(matches!(
            policy.check(host, &[], micro, 3),
            Err(CapacityError::Memory {
                needed_mib: 864,
                available_mib: 576,
                ..
            })
        ));
        assert!(matches!(
            policy.check(host, &[micro], micro, 2),
            Err(CapacityError::Memory { .. })
        ));
        assert_eq!(policy.how_many_fit(host, &[], micro), 2);
        assert_eq!(policy.how_many_fit(host, &[micro], micro), 1);
    }

    #[test]
    fn vcpus_overcommit_four_times_the_host() {
        let host = HostResources {
            cpus: 2,
            memory_mib: 1 << 20,
        };
        let policy = CapacityPolicy::default();
        let xl = ty("t2.xlarge");
        assert!(policy.check(host, &[], xl, 2).is_ok());
        assert!(matches!(
            policy.check(host, &[xl], xl, 2),
            Err(CapacityError::Vcpus {
                needed: 8,
                available: 4,
                ..
            })
        ));
        assert_eq!(policy.how_many_fit(host, &[], xl), 2);
    }

    #[test]
    fn a_host_smaller_than_its_reserve_fits_nothing() {
        let host = HostResources {
            cpus: 1,
            memory_mib: 100,
        };
        let policy = CapacityPolicy::default();
        assert_eq!(policy.how_many_fit(host, &[], ty("lab.nano")), 0);
        assert!(policy.check(host, &[], ty("lab.nano"), 1).is_err());
        // Zero instances always fit.
        assert!(policy.check(host, &[], ty("lab.nano"), 0).is_ok());
    }

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
        let nano = lookup("lab.nano").expect("lab.nano");
        assert_eq!((nano.vcpus, nano.memory_mib), (1, 128));
        let micro = lookup("lab.micro").expect("lab.micro");
        assert_eq!((micro.vcpus, micro.memory_mib), (1, 256));
        assert_eq!(lookup("t2.micro").map(|t| t.memory_mib), Some(1024));
    }
}

//! Each VMM in cgroups of its own, as Firecracker's jailer puts each
//! microVM: its memory (guest RAM plus a fixed overhead), its number of
//! threads and its CPU time (the instance type's vCPUs plus one for the
//! device and API threads) are capped, so a VMM that misbehaves (or a
//! guest that finds a way to make it allocate) hurts only itself. When the
//! memory cap is hit the kernel's OOM killer ends that VMM alone, and the
//! instance's state reason says so.
//!
//! cgroup v2 is used where its hierarchy has the memory, pids and cpu
//! controllers; otherwise the v1 hierarchies of those controllers (hosts
//! that mount v1, as our CI machines do). The groups are
//! `<hierarchy>/ec2lab/<instance-id>`, created before the VMM starts; the
//! VMM joins them between fork and exec (it writes `0` to descriptors of
//! their `cgroup.procs` opened beforehand), so it never runs a moment
//! outside them, and they are removed once it has ended. Where no
//! hierarchy is writable, VMMs run without cgroups and the daemon says so
//! once at start.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

/// The parent group of every instance's.
const PARENT: &str = "ec2lab";
/// Memory a VMM may use beyond its guest's RAM: its threads, the device
/// queues' buffers, vsock connections (at most 32 MiB), the metadata
/// service, and the page cache of the memory file a resumed VM maps.
pub const MEMORY_OVERHEAD_BYTES: u64 = 160 << 20;
/// Threads and processes: main, API (its pool grows per connection),
/// devices, helpers, and one per vCPU.
pub const PIDS_MAX: u64 = 256;
/// The CFS period the CPU cap is expressed in.
pub const CPU_PERIOD_US: u64 = 100_000;

/// Errors preparing an instance's cgroups.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// Creating a group or setting a limit failed.
    #[error("cgroup {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The caps of one VMM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of memory, page cache included.
    pub memory_bytes: u64,
    /// Tasks (threads).
    pub pids: u64,
    /// CPU time per [`CPU_PERIOD_US`], in microseconds.
    pub cpu_quota_us: u64,
}

impl Limits {
    /// The caps of an instance with `vcpus` vCPUs and `memory_mib` of RAM.
    pub fn for_instance(vcpus: u32, memory_mib: u64) -> Self {
        Self {
            memory_bytes: (memory_mib << 20) + MEMORY_OVERHEAD_BYTES,
            pids: PIDS_MAX,
            cpu_quota_us: (u64::from(vcpus) + 1) * CPU_PERIOD_US,
        }
    }
}

/// Where the groups live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Layout {
    /// One cgroup v2 hierarchy mounted at this path.
    V2(PathBuf),
    /// cgroup v1: the mount point of each controller's hierarchy.
    V1 {
        /// `memory`.
        memory: PathBuf,
        /// `pids`.
        pids: PathBuf,
        /// `cpu`.
        cpu: PathBuf,
    },
}

impl Layout {
    /// Finds the hierarchies in `mounts` (the text of /proc/self/mounts);
    /// `controllers` reads a v2 mount's `cgroup.controllers`.
    pub fn find(mounts: &str, controllers: impl Fn(&Path) -> Option<String>) -> Option<Self> {
        let entries: Vec<(&str, &str, &str)> = mounts
            .lines()
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                let _source = f.next()?;
                let dir = f.next()?;
                let kind = f.next()?;
                let options = f.next()?;
                Some((dir, kind, options))
            })
            .collect();
        for (dir, kind, _) in &entries {
            if *kind == "cgroup2" {
                let dir = Path::new(dir);
                let has = controllers(dir).unwrap_or_default();
                let has: Vec<&str> = has.split_whitespace().collect();
                if ["memory", "pids", "cpu"].iter().all(|c| has.contains(c)) {
                    return Some(Layout::V2(dir.to_path_buf()));
                }
            }
        }
        let v1 = |controller: &str| {
            entries
                .iter()
                .find(|(_, kind, options)| {
                    *kind == "cgroup" && options.split(',').any(|o| o == controller)
                })
                .map(|(dir, _, _)| PathBuf::from(dir))
        };
        Some(Layout::V1 {
            memory: v1("memory")?,
            pids: v1("pids")?,
            cpu: v1("cpu")?,
        })
    }

    /// The instance's group in each hierarchy.
    pub fn groups(&self, instance_id: &str) -> Vec<PathBuf> {
        match self {
            Layout::V2(root) => vec![group(root, instance_id)],
            Layout::V1 { memory, pids, cpu } => [memory, pids, cpu]
                .iter()
                .map(|h| group(h, instance_id))
                .collect(),
        }
    }

    /// The files that set `limits` on the instance's groups, and their
    /// contents, in the order they are written.
    pub fn settings(&self, instance_id: &str, limits: &Limits) -> Vec<(PathBuf, String)> {
        let quota = format!("{} {CPU_PERIOD_US}", limits.cpu_quota_us);
        match self {
            Layout::V2(root) => {
                let group = group(root, instance_id);
                vec![
                    (group.join("memory.max"), limits.memory_bytes.to_string()),
                    // No swap: a VMM's guest memory is not paged out behind
                    // the guest's back.
                    (group.join("memory.swap.max"), "0".to_string()),
                    (group.join("pids.max"), limits.pids.to_string()),
                    (group.join("cpu.max"), quota),
                ]
            }
            Layout::V1 { memory, pids, cpu } => {
                let group = |h: &Path| group(h, instance_id);
                vec![
                    (
                        group(memory).join("memory.limit_in_bytes"),
                        limits.memory_bytes.to_string(),
                    ),
                    (group(pids).join("pids.max"), limits.pids.to_string()),
                    (
                        group(cpu).join("cpu.cfs_period_us"),
                        CPU_PERIOD_US.to_string(),
                    ),
                    (
                        group(cpu).join("cpu.cfs_quota_us"),
                        limits.cpu_quota_us.to_string(),
                    ),
                ]
            }
        }
    }

    /// The file whose `oom_kill N` line counts the group's OOM kills.
    fn oom_counter(&self, instance_id: &str) -> PathBuf {
        match self {
            Layout::V2(root) => group(root, instance_id).join("memory.events"),
            Layout::V1 { memory, .. } => group(memory, instance_id).join("memory.oom_control"),
        }
    }
}

/// The instance's group in `hierarchy`.
fn group(hierarchy: &Path, instance_id: &str) -> PathBuf {
    hierarchy.join(PARENT).join(instance_id)
}

/// The cgroups of a daemon's VMMs.
#[derive(Clone, Debug, Default)]
pub struct Cgroups {
    layout: Option<Layout>,
}

/// An instance's groups, ready for its VMM to join.
#[derive(Debug, Default)]
pub struct Prepared {
    /// Each group's `cgroup.procs`, open for writing.
    procs: Vec<File>,
}

impl Cgroups {
    /// The host's hierarchies, from /proc/self/mounts; none (logged) when
    /// no usable one is mounted.
    pub fn detect() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let layout = Layout::find(&mounts, |dir| {
            std::fs::read_to_string(dir.join("cgroup.controllers")).ok()
        });
        match &layout {
            Some(layout) => log::info!("VMMs get cgroups of their own: {layout:?}"),
            None => log::warn!(
                "no cgroup hierarchy with the memory, pids and cpu controllers: \
                 VMMs run without memory, thread or CPU caps"
            ),
        }
        Self { layout }
    }

    /// Cgroups in `layout` (tests).
    pub fn with_layout(layout: Option<Layout>) -> Self {
        Self { layout }
    }

    /// The layout in use, if any.
    pub fn layout(&self) -> Option<&Layout> {
        self.layout.as_ref()
    }

    /// Creates the instance's groups with `limits`.
    pub fn prepare(&self, instance_id: &str, limits: &Limits) -> Result<Prepared, CgroupError> {
        let Some(layout) = &self.layout else {
            return Ok(Prepared::default());
        };
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| CgroupError::Io { path, source }
        };
        if let Layout::V2(root) = layout {
            // Controllers must be enabled for the children of the root and
            // of the parent group.
            let parent = root.join(PARENT);
            create_dir(&parent).map_err(io(&parent))?;
            for dir in [root.as_path(), parent.as_path()] {
                let path = dir.join("cgroup.subtree_control");
                write_file(&path, "+memory +pids +cpu").map_err(io(&path))?;
            }
        }
        let mut procs = Vec::new();
        for group in layout.groups(instance_id) {
            if let Some(parent) = group.parent() {
                create_dir(parent).map_err(io(parent))?;
            }
            // A group an earlier VMM of the instance left (the daemon was
            // down when it ended) goes first: its counters are not this one's.
            let _ = std::fs::remove_dir(&group);
            create_dir(&group).map_err(io(&group))?;
            let path = group.join("cgroup.procs");
            procs.push(
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io(&path))?,
            );
        }
        for (path, value) in layout.settings(instance_id, limits) {
            match write_file(&path, &value) {
                Ok(()) => {}
                // Swap accounting may be off; the other caps still hold.
                Err(e) if path.ends_with("memory.swap.max") => {
                    log::debug!("{}: {e}", path.display());
                }
                Err(e) => return Err(io(&path)(e)),
            }
        }
        Ok(Prepared { procs })
    }

    /// How many times the OOM killer ended a process of the instance's
    /// memory group.
    pub fn oom_kills(&self, instance_id: &str) -> u64 {
        let Some(layout) = &self.layout else {
            return 0;
        };
        std::fs::read_to_string(layout.oom_counter(instance_id))
            .unwrap_or_default()
            .lines()
            .find_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                ["oom_kill", n] => n.parse::<u64>().ok(),
                _ => None,
            })
            .unwrap_or(0)
    }

    /// Removes the instance's groups once its VMM has ended (a group that
    /// still holds a process stays).
    pub fn remove(&self, instance_id: &str) {
        let Some(layout) = &self.layout else {
            return;
        };
        for group in layout.groups(instance_id) {
            match std::fs::remove_dir(&group) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => log::warn!("cannot remove cgroup {}: {e}", group.display()),
            }
        }
    }
}

impl Prepared {
    /// Has the child `command` starts join the groups before it execs.
    pub fn join_in(self, command: &mut std::process::Command) {
        use std::os::fd::AsRawFd;
        use std::os::unix::process::CommandExt;
        let fds: Vec<i32> = self.procs.iter().map(AsRawFd::as_raw_fd).collect();
        // The files must stay open until the child has forked: moved into
        // the closure, which the command keeps.
        let procs = self.procs;
        // SAFETY: write(2) is async-signal-safe; the descriptors belong to
        // `procs`, kept open by the closure; nothing is allocated.
        unsafe {
            command.pre_exec(move || {
                let _keep = &procs;
                for fd in &fds {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
    }
}

fn create_dir(path: &Path) -> std::io::Result<()> {
    match std::fs::create_dir(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        other => other,
    }
}

fn write_file(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)?
        .write_all(value.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    const V1_MOUNTS: &str = "\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0
cgroup /sys/fs/cgroup/cpuacct cgroup rw,relatime,cpuacct 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/pids cgroup rw,relatime,pids 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
";

    #[test]
    fn v2_is_used_only_with_its_controllers_else_the_v1_hierarchies() {
        let v1 = Layout::find(V1_MOUNTS, |_| Some("hugetlb\n".into()));
        assert_eq!(
            v1,
            Some(Layout::V1 {
                memory: "/sys/fs/cgroup/memory".into(),
                pids: "/sys/fs/cgroup/pids".into(),
                cpu: "/sys/fs/cgroup/cpu".into(),
            })
        );
        let v2 = Layout::find(V1_MOUNTS, |_| Some("cpuset cpu io memory pids\n".into()));
        assert_eq!(v2, Some(Layout::V2("/sys/fs/cgroup/unified".into())));
        // A co-mounted cpu,cpuacct hierarchy counts as cpu.
        let comounted = V1_MOUNTS.replace(
            "/sys/fs/cgroup/cpu cgroup rw,relatime,cpu",
            "/sys/fs/cgroup/cpu,cpuacct cgroup rw,relatime,cpu,cpuacct",
        );
        assert!(matches!(
            Layout::find(&comounted, |_| None),
            Some(Layout::V1 { cpu, .. }) if cpu == Path::new("/sys/fs/cgroup/cpu,cpuacct")
        ));
        let no_pids = V1_MOUNTS.replace("pids cgroup rw,relatime,pids", "x cgroup rw,x");
        assert_eq!(Layout::find(&no_pids, |_| None), None);
    }

    #[test]
    fn limits_follow_the_instance_type_in_either_layout() {
        let limits = Limits::for_instance(2, 1024);
        assert_eq!(limits.memory_bytes, (1024 << 20) + MEMORY_OVERHEAD_BYTES);
        assert_eq!(limits.cpu_quota_us, 300_000);
        let v2 = Layout::V2("/cg".into()).settings("i-1", &limits);
        assert_eq!(
            v2,
            [
                ("/cg/ec2lab/i-1/memory.max".into(), "1241513984".to_string()),
                ("/cg/ec2lab/i-1/memory.swap.max".into(), "0".to_string()),
                ("/cg/ec2lab/i-1/pids.max".into(), "256".to_string()),
                ("/cg/ec2lab/i-1/cpu.max".into(), "300000 100000".to_string()),
            ]
            .map(|(p, v): (PathBuf, String)| (p, v))
        );
        let v1 = Layout::V1 {
            memory: "/m".into(),
            pids: "/p".into(),
            cpu: "/c".into(),
        };
        assert_eq!(
            v1.groups("i-1"),
            [
                PathBuf::from("/m/ec2lab/i-1"),
                "/p/ec2lab/i-1".into(),
                "/c/ec2lab/i-1".into()
            ]
        );
        let files: Vec<String> = v1
            .settings("i-1", &limits)
            .into_iter()
            .map(|(p, v)| format!("{}={v}", p.display()))
            .collect();
        assert_eq!(
            files,
            [
                "/m/ec2lab/i-1/memory.limit_in_bytes=1241513984",
                "/p/ec2lab/i-1/pids.max=256",
                "/c/ec2lab/i-1/cpu.cfs_period_us=100000",
                "/c/ec2lab/i-1/cpu.cfs_quota_us=300000",
            ]
        );
    }
}

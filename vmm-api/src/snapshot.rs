//! The files a snapshot directory holds (`snapshot_dir`, `--restore-from`):
//! the VMM writes them, the control plane keeps and removes them (a
//! hibernated instance's), so both take their names from here.

/// The VM state: vCPUs, interrupt controllers, devices (versioned,
/// checksummed).
pub const STATE_FILE: &str = "state";
/// Guest memory, sparse.
pub const MEMORY_FILE: &str = "memory";
/// The state while it is written, before it is renamed into place.
pub const STATE_TMP_FILE: &str = "state.tmp";
/// The memory while it is written, before it is renamed into place.
pub const MEMORY_TMP_FILE: &str = "memory.tmp";
/// Every file a snapshot directory may hold, finished or partial.
pub const ALL_FILES: [&str; 4] = [STATE_FILE, MEMORY_FILE, STATE_TMP_FILE, MEMORY_TMP_FILE];

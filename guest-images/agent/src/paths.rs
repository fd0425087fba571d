//! Where the agent writes, always below the `--root` prefix so tests can
//! point it at a temporary directory.

use std::path::{Path, PathBuf};

/// The agent's own state, below the root.
pub const STATE_DIR: &str = "/var/lib/ec2lab-guest";

/// `absolute` (e.g. `/etc/hostname`) below `root`.
pub fn rooted(root: &Path, absolute: &str) -> PathBuf {
    root.join(absolute.trim_start_matches('/'))
}

/// True for a value usable as one path component: instance ids, user
/// names. Metadata is outside input; it never gets to name `..`.
pub fn is_safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rooted_keeps_paths_below_root() {
        assert_eq!(
            rooted(Path::new("/tmp/r"), "/etc/hostname"),
            PathBuf::from("/tmp/r/etc/hostname")
        );
        assert_eq!(
            rooted(Path::new("/"), "/etc/hostname"),
            PathBuf::from("/etc/hostname")
        );
    }

    #[test]
    fn unsafe_components_are_rejected() {
        assert!(is_safe_component("i-0123456789abcdef0"));
        assert!(!is_safe_component(".."));
        assert!(!is_safe_component("a/b"));
        assert!(!is_safe_component(""));
    }
}

//! Small `/proc` readers shared by the server side and `sbx` (which sees the sandbox's own
//! `/proc`): process lists, `stat` fields, pid-namespace and owner lookups. Blocking but tiny:
//! the host side calls them from blocking threads, `sbx` on its own single thread.

use std::os::unix::fs::MetadataExt;

/// The fields of `/proc/<pid>/stat` we use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Stat {
    /// State letter (`R`, `S`, `Z`, …).
    pub state: u8,
    /// Session id (field 6).
    pub session: i32,
    /// Start time in clock ticks after boot (field 22).
    pub start_time: u64,
}

impl Stat {
    /// A zombie holds no resources but its pid; it is gone for our purposes.
    pub(crate) fn is_zombie(&self) -> bool {
        matches!(self.state, b'Z' | b'X')
    }
}

/// Parses the text of `/proc/<pid>/stat` (the command name may contain spaces and parens).
pub(crate) fn parse_stat(text: &str) -> Option<Stat> {
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    // rest starts at field 3 (state): index = field - 3.
    Some(Stat {
        state: *fields.first()?.as_bytes().first()?,
        session: fields.get(3)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// `stat` of one process, `None` if it is gone.
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Every pid in `/proc`.
pub(crate) fn pids() -> Vec<i32> {
    checked_pids().unwrap_or_default()
}

/// Every pid in `/proc`; an unreadable `/proc` (out of descriptors) is an error.
fn checked_pids() -> std::io::Result<Vec<i32>> {
    let mut pids = Vec::new();
    for e in std::fs::read_dir("/proc")? {
        if let Some(pid) = e?.file_name().to_str().and_then(|n| n.parse().ok()) {
            pids.push(pid);
        }
    }
    Ok(pids)
}

/// Live (non-zombie) processes of session `sid`, except `exclude`.
pub(crate) fn session_members(sid: i32, exclude: i32) -> Vec<i32> {
    pids()
        .into_iter()
        .filter(|&p| p != exclude)
        .filter(|&p| stat(p).is_some_and(|s| s.session == sid && !s.is_zombie()))
        .collect()
}

/// Whether `pid` is alive and started at `start_time` (not a reused pid).
pub(crate) fn is_alive(pid: i32, start_time: u64) -> bool {
    stat(pid).is_some_and(|s| s.start_time == start_time && !s.is_zombie())
}

/// Our own start time.
pub(crate) fn self_start_time() -> u64 {
    stat(std::process::id().cast_signed()).map_or(0, |s| s.start_time)
}

/// Live processes (host view) of a sandbox: in pid namespace `pid_ns` (`pid:[…]`) or owned by
/// `uid` (a root server's per-sandbox uid). One pass over `/proc`.
pub(crate) fn sandbox_members(pid_ns: Option<&str>, uid: Option<u32>) -> Vec<i32> {
    sandbox_members_checked(pid_ns, uid).unwrap_or_default()
}

/// [`sandbox_members`], with an unreadable `/proc` an error rather than "none" (cleanup must
/// not conclude that nothing is left from a listing it could not make).
pub(crate) fn sandbox_members_checked(
    pid_ns: Option<&str>,
    uid: Option<u32>,
) -> std::io::Result<Vec<i32>> {
    Ok(checked_pids()?
        .into_iter()
        .filter(|&p| {
            let by_uid = uid.is_some_and(|u| {
                std::fs::metadata(format!("/proc/{p}")).is_ok_and(|m| m.uid() == u)
            });
            let by_ns = || {
                pid_ns.is_some_and(|ns| {
                    std::fs::read_link(format!("/proc/{p}/ns/pid"))
                        .is_ok_and(|l| l.as_os_str() == ns)
                })
            };
            // Unless known to be a zombie: an unreadable stat (out of descriptors) counts as
            // alive, and a process that vanished meanwhile is gone from the next listing.
            (by_uid || by_ns()) && !stat(p).is_some_and(|s| s.is_zombie())
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_with_odd_names() {
        let line = "123 (a) b (c)) S 1 123 77 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 5555 1000 10";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.state, s.session, s.start_time), (b'S', 77, 5555));
        assert!(parse_stat("garbage").is_none());
    }

    #[test]
    fn sees_itself() {
        let me = std::process::id().cast_signed();
        assert!(is_alive(me, self_start_time()));
        assert!(!is_alive(me, self_start_time() + 1));
        assert!(pids().contains(&me));
    }
}

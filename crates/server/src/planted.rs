//! Deliberate bugs, compiled in only with the `planted-bugs` feature, so the chaos harness
//! can show that it catches a server that breaks its promises. A build without the
//! feature has no way to turn them on. One is on at a time: `OSTRAKON_PLANTED_BUG=NAME`.

/// Whether linearizable reads skip the read index and answer from local state, as if
/// they were serializable: a member cut off from the cluster then serves stale values.
/// On with `OSTRAKON_PLANTED_BUG=stale-reads` in a `planted-bugs` build.
pub fn stale_reads() -> bool {
    planted("stale-reads", "linearizable reads skip the read index")
}

/// Whether reads ignore the locks of transactions across ranges: a read at a revision
/// at or above a committed transaction's then sees the ranges it has been resolved in
/// and misses it in those that still hold its lock, part of the transaction.
/// On with `OSTRAKON_PLANTED_BUG=reads-ignore-locks` in a `planted-bugs` build.
pub fn reads_ignore_locks() -> bool {
    planted("reads-ignore-locks", "reads ignore transactions' locks")
}

#[cfg(feature = "planted-bugs")]
fn planted(name: &str, what: &str) -> bool {
    static CHOSEN: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let chosen = CHOSEN.get_or_init(|| {
        let chosen = std::env::var("OSTRAKON_PLANTED_BUG").ok();
        if let Some(bug) = &chosen {
            tracing::warn!(bug, "a planted bug is on");
        }
        chosen
    });
    let on = chosen.as_deref() == Some(name);
    if on {
        tracing::trace!("planted bug: {what}");
    }
    on
}

#[cfg(not(feature = "planted-bugs"))]
fn planted(_name: &str, _what: &str) -> bool {
    false
}

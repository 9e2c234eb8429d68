//! Deliberate bugs, compiled in only with the `planted-bugs` feature, so the chaos harness
//! can show that it catches a server that breaks its promises. A build without the
//! feature has no way to turn them on.

/// Whether linearizable reads skip the read index and answer from local state, as if
/// they were serializable: a member cut off from the cluster then serves stale values.
/// On with `OSTRAKON_PLANTED_BUG=stale-reads` in a `planted-bugs` build.
pub fn stale_reads() -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            let on = std::env::var("OSTRAKON_PLANTED_BUG").as_deref() == Ok("stale-reads");
            if on {
                tracing::warn!("planted bug: linearizable reads skip the read index");
            }
            on
        })
    }
    #[cfg(not(feature = "planted-bugs"))]
    false
}

//! Failures the process must not survive.
//!
//! After a failed `fsync` the kernel may already have dropped the dirty pages and cleared
//! the error, so a retry can "succeed" without the data ever reaching the disk
//! ("fsyncgate", PostgreSQL 2018). The only safe reaction is to stop and recover from the
//! log and from the peers.

/// The exit status of a process that stopped because its disk failed it.
pub const DISK_FAILURE_EXIT_CODE: i32 = 71;

/// Logs the failure and exits the process at once, without unwinding.
pub fn disk_failure(what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "fatal: {what} failed; exiting without retrying");
    eprintln!("ostrakon: fatal: {what} failed: {error}; exiting without retrying");
    std::process::exit(DISK_FAILURE_EXIT_CODE);
}

/// The fault-injection switch for `fsync`, so tests and the chaos harness can check that
/// the process exits rather than going on. `OSTRAKON_FAILPOINT_FSYNC=error` in the
/// environment fails every WAL sync; `OSTRAKON_FAILPOINT_FSYNC=file:<path>` fails them
/// while `<path>` exists, so the fault can be injected into a running member.
pub fn fsync_failpoint_armed() -> bool {
    enum Failpoint {
        Off,
        Always,
        WhileFileExists(std::path::PathBuf),
    }
    static FAILPOINT: std::sync::OnceLock<Failpoint> = std::sync::OnceLock::new();
    let failpoint = FAILPOINT.get_or_init(|| match std::env::var("OSTRAKON_FAILPOINT_FSYNC") {
        Ok(value) if value == "error" => Failpoint::Always,
        Ok(value) => match value.strip_prefix("file:") {
            Some(path) => Failpoint::WhileFileExists(path.into()),
            None => Failpoint::Off,
        },
        Err(_) => Failpoint::Off,
    });
    match failpoint {
        Failpoint::Off => false,
        Failpoint::Always => true,
        Failpoint::WhileFileExists(path) => path.exists(),
    }
}

/// A crash at a named point, for tests of what a restart finds when the process dies
/// between two steps whose timing is too narrow to hit with kill -9:
/// `OSTRAKON_FAILPOINT_CRASH=<name>` in the environment aborts the process there, as
/// abruptly as kill -9 (nothing is flushed or synced on the way out).
pub fn crash_failpoint(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("OSTRAKON_FAILPOINT_CRASH").ok());
    if armed.as_deref() == Some(name) {
        eprintln!("failpoint {name}: crashing");
        std::process::abort();
    }
}

/// Unwraps a storage engine result; an engine error means the disk failed us.
pub fn engine<T, E: std::fmt::Display>(what: &str, result: Result<T, E>) -> T {
    result.unwrap_or_else(|error| disk_failure(what, &error))
}

/// A deliberate bug, compiled in only with the `planted-bugs` feature (the chaos
/// harness's self-test): with `OSTRAKON_PLANTED_BUG=wal-skips-fsync`, WAL syncs return
/// without syncing. A process killed loses nothing (the page cache keeps the writes); a
/// power cut loses acknowledged writes, which the power-loss nemesis must catch.
pub fn planted_wal_skips_fsync() -> bool {
    #[cfg(feature = "planted-bugs")]
    {
        static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *ON.get_or_init(|| {
            let on = std::env::var("OSTRAKON_PLANTED_BUG").as_deref() == Ok("wal-skips-fsync");
            if on {
                tracing::warn!("planted bug: WAL syncs do not sync");
            }
            on
        })
    }
    #[cfg(not(feature = "planted-bugs"))]
    false
}

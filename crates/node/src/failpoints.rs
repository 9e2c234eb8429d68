//! Pause points for tests on real processes: `OSTRAKON_FAILPOINT_PAUSE=<name>:<path>` in
//! a member's environment holds every task that reaches the point `name` for as long as
//! the file at `path` exists, so that a test can make a race happen every time (take a
//! backup, split while it is held at the point, let it go). Points not named cost one
//! comparison.

use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// How often a held task looks whether the file is gone.
const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// The longest a task is held: a test that forgets the file cannot hang the member.
const HOLD_MAX: Duration = Duration::from_secs(60);

/// The point named in the environment and its file, read once.
fn armed() -> Option<&'static (String, PathBuf)> {
    static ARMED: OnceLock<Option<(String, PathBuf)>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var("OSTRAKON_FAILPOINT_PAUSE").ok()?;
            let (name, path) = value.split_once(':')?;
            Some((name.to_string(), PathBuf::from(path)))
        })
        .as_ref()
}

/// Holds the caller at the point `name` while its file exists (if it is the point armed).
pub async fn pause(name: &str) {
    let Some((armed_name, path)) = armed() else {
        return;
    };
    if armed_name != name {
        return;
    }
    let held_since = tokio::time::Instant::now();
    if path.exists() {
        tracing::info!(point = name, "held at a pause point");
    }
    while path.exists() && held_since.elapsed() < HOLD_MAX {
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

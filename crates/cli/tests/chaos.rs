//! `ostrakon chaos` end to end: a cluster of real processes under the crash nemeses while
//! clients read, write and compare-and-set; the recorded history must be linearizable.

use std::process::Command;

fn chaos(nemesis: &str) -> serde_json::Value {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("verdict.json");
    let output = Command::new(env!("CARGO_BIN_EXE_ostrakon"))
        .args([
            "chaos",
            "--duration",
            "12s",
            "--nemesis",
            nemesis,
            "--clients",
            "4",
        ])
        .arg("--out")
        .arg(&out)
        .output()
        .expect("ostrakon chaos runs");
    let verdict: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_else(|_| {
            panic!(
                "no verdict written: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        }))
        .unwrap();
    assert!(output.status.success(), "{verdict:#}");
    verdict
}

#[test]
fn histories_under_crashes_and_pauses_are_linearizable() {
    for nemesis in ["kill-leader", "kill-random", "pause-leader"] {
        let verdict = chaos(nemesis);
        assert_eq!(verdict["valid"], true, "{verdict:#}");
        assert_eq!(verdict["checker"], "linearizable", "{verdict:#}");
        assert!(verdict["ok"].as_u64().unwrap() > 100, "{verdict:#}");
        let faults = verdict["faults"].as_array().unwrap();
        assert!(
            !faults.is_empty(),
            "the nemesis injected nothing: {verdict:#}"
        );
    }
}

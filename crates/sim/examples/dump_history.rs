//! Prints a seed's simplified history (debugging aid for slow linearizability checks).
fn main() {
    let seed: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut sim =
        ostrakon_sim::simulation::Simulation::new(seed, None, std::env::var("TRACE").is_ok());
    sim.run();
    for line in sim.trace_lines() {
        println!("{line}");
    }
    let mut history = sim.history().clone();
    history.finish_pending_as_unknown();
    let ops = ostrakon_check::simplify_unknowns(history.ops());
    let unknown = ops
        .iter()
        .filter(|o| o.outcome == ostrakon_check::Outcome::Unknown)
        .count();
    println!("{} ops after simplification, {unknown} unknown", ops.len());
    for op in &ops {
        println!(
            "c{} {:?} [{}, {:?}] {:?}",
            op.client, op.input, op.invoked_at, op.completed_at, op.outcome
        );
    }
}

//! Measure 1: apply and revert latency for one process, end to end (from
//! spawning `ulp trigger` to its exit), each on a freshly started target,
//! so every apply pays for loading the container. Baseline: starting and
//! exiting the same `ulp` binary (`ulp --version`), the part of an apply
//! that is process start.

use std::time::Duration;

use crate::kit::Kit;
use crate::report::{median, percentile, Row, Target, Unit};
use crate::Config;

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

pub fn run(kit: &Kit, cfg: &Config, rows: &mut Vec<Row>) -> Result<(), String> {
    let reps = cfg.reps(60, 6);
    let mut start = Vec::new();
    let (mut apply, mut revert, mut reapply) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..reps {
        let r = kit.ulp(&["--version"])?;
        if r.code != 0 {
            return Err(format!("ulp --version exited {}", r.code));
        }
        start.push(secs(r.elapsed));
        let mut t = kit.start_target("bench_target", &[])?;
        t.expect("call", "2")?;
        apply.push(secs(kit.trigger(t.pid, false)?.elapsed));
        t.expect("call", "3")?;
        revert.push(secs(kit.trigger(t.pid, true)?.elapsed));
        t.expect("call", "2")?;
        reapply.push(secs(kit.trigger(t.pid, false)?.elapsed));
        t.expect("call", "3")?;
    }
    let base = median(&start);
    let libpulp = "libpulp: 2.2 ms end to end, 0.9 ms of it starting its binary";
    rows.push(
        Row::new("apply, 1 process: median", Unit::Secs, median(&apply))
            .baseline(base)
            .target(Target::AtMost(1.0e-3))
            .samples(&apply)
            .note(format!(
                "{reps} fresh targets, `ulp trigger -p PID` end to end; baseline = `ulp --version` start+exit; {libpulp}"
            )),
    );
    rows.push(
        Row::new(
            "apply, 1 process: p90",
            Unit::Secs,
            percentile(&apply, 90.0),
        )
        .baseline(base),
    );
    rows.push(
        Row::new("revert, 1 process: median", Unit::Secs, median(&revert))
            .baseline(base)
            .samples(&revert),
    );
    rows.push(
        Row::new(
            "revert, 1 process: p90",
            Unit::Secs,
            percentile(&revert, 90.0),
        )
        .baseline(base),
    );
    rows.push(
        Row::new(
            "re-apply (container loaded): median",
            Unit::Secs,
            median(&reapply),
        )
        .baseline(base)
        .samples(&reapply)
        .note("apply again after a revert in the same process: a reverted container stays loaded"),
    );
    rows.push(
        Row::new("ulp binary start+exit: median", Unit::Secs, base)
            .samples(&start)
            .extra("p90", percentile(&start, 90.0))
            .note("`ulp --version`, the fixed cost inside every end-to-end number"),
    );
    Ok(())
}

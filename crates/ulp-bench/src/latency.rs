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
    // Per apply: (phase name, seconds) as `ulp trigger -v` prints them.
    let mut phases: Vec<Vec<(String, f64)>> = Vec::new();
    let (mut apply, mut revert, mut reapply) = (Vec::new(), Vec::new(), Vec::new());
    // The same apply switching every thread at once (libpulp's model).
    let mut apply_none = Vec::new();
    for _ in 0..reps {
        let r = kit.ulp(&["--version"])?;
        if r.code != 0 {
            return Err(format!("ulp --version exited {}", r.code));
        }
        start.push(secs(r.elapsed));
        let mut t = kit.start_target("bench_target", &[])?;
        t.expect("call", "2")?;
        let r = kit.trigger_with(t.pid, false, &["-v"])?;
        apply.push(secs(r.elapsed));
        phases.push(parse_phases(&r.stdout)?);
        t.expect("call", "3")?;
        revert.push(secs(kit.trigger(t.pid, true)?.elapsed));
        t.expect("call", "2")?;
        reapply.push(secs(kit.trigger(t.pid, false)?.elapsed));
        t.expect("call", "3")?;
        let none = ["--consistency=none"];
        kit.trigger_with(t.pid, true, &none)?;
        t.expect("call", "2")?;
        apply_none.push(secs(kit.trigger_with(t.pid, false, &none)?.elapsed));
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
    for (i, (name, _)) in phases[0].iter().enumerate() {
        let v: Vec<f64> = phases.iter().filter_map(|p| Some(p.get(i)?.1)).collect();
        rows.push(
            Row::new(
                format!("apply phase {name}: median"),
                Unit::Secs,
                median(&v),
            )
            .samples(&v)
            .note(phase_note(name)),
        );
    }
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
        Row::new(
            "re-apply, --consistency=none: median",
            Unit::Secs,
            median(&apply_none),
        )
        .baseline(base)
        .samples(&apply_none)
        .note("the re-apply above switching every thread at once (no per-thread transition): what the model costs is the difference"),
    );
    rows.push(
        Row::new("ulp binary start+exit: median", Unit::Secs, base)
            .samples(&start)
            .extra("p90", percentile(&start, 90.0))
            .note("`ulp --version`, the fixed cost inside every end-to-end number"),
    );
    Ok(())
}

/// The phases of one apply from `ulp trigger -v`'s line
/// `phases (ms): find 0.123, check ..., total ...`.
pub fn parse_phases(stdout: &str) -> Result<Vec<(String, f64)>, String> {
    let line = stdout
        .lines()
        .find_map(phases_line)
        .ok_or_else(|| format!("no phases line in `ulp trigger -v`: {stdout}"))?;
    phases_in(line)
}

/// What follows `phases (ms): ` in a line of `ulp trigger -v`.
pub fn phases_line(line: &str) -> Option<&str> {
    line.trim().strip_prefix("phases (ms): ")
}

/// The (phase, seconds) of one phases line ([`phases_line`]).
pub fn phases_in(line: &str) -> Result<Vec<(String, f64)>, String> {
    line.split(", ")
        .map(|p| {
            let (name, ms) = p.split_once(' ').ok_or("bad phases line")?;
            let ms: f64 = ms.parse().map_err(|_| format!("bad phase {p:?}"))?;
            Ok((name.to_string(), ms * 1e-3))
        })
        .collect()
}

/// What a phase of the apply row covers (ulp_core::trigger::Phases).
fn phase_note(name: &str) -> &'static str {
    match name {
        "find" => "in-tool: /proc/PID/maps read, runtime found in them (its symbols, magic)",
        "check" => "in-tool: objects, build-ids, unit sizes, request built",
        "caller_stop" => "in-tool: one thread seized and checked for the runtime's call",
        "call" => "in-tool: the runtime's call (container dlopen, resolve, plan) and its answer",
        "got" => "in-tool: GOT slots of the changed functions found (none here: no --redirect-got)",
        "stop_all" => "in-tool: every thread seized for the writes",
        "writes" => "in-tool: threads and bytes checked, code written, journal cleared",
        "resume" => "in-tool: every thread released",
        "transition" => {
            "in-tool: each thread checked on its own (stop, unwind), old ones waited for"
        }
        "finish" => {
            "in-tool: the transition's last stop: functions pointed straight at the new code"
        }
        "total" => "in-tool: find to end of the operation (not process start/exit)",
        _ => "",
    }
}

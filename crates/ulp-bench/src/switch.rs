//! Measure 7: a patch of two functions, which the runtime switches at once
//! (its switch plan: a guarded slot per function and one flag byte,
//! ARCHITECTURE.md "Switching several functions at once"), against the
//! one-function patch of the latency rows, measured in the same run.
//!
//! Apply and revert: each on a freshly started target, `ulp trigger -v -p
//! PID` end to end, the one-function patch (bench_livepatch.so) and the
//! two-function one (bench_switch.so: bench_fn and bench_fn2) on alternate
//! targets, interleaved. Pause: one target with the probe and 16 idle
//! threads (as `pause`), each round applying and reverting both patches in
//! alternating order. After every apply and revert the target is asked
//! which code both functions run.

use std::time::Duration;

/// This measure compares the switch of every thread at once of two
/// functions with the one-function plan: both without the per-thread
/// transition (whose cost the `transition` and `re-apply, --consistency=none`
/// rows show).
const NONE: &str = "--consistency=none";

use crate::kit::{Kit, SWITCH_PATCH};
use crate::latency::parse_phases;
use crate::pause::read_gap;
use crate::preload::order;
use crate::procs::{Proc, Ran};
use crate::report::{median, percentile, Row, Unit};
use crate::Config;

const ONE: &str = "bench_livepatch.so";

/// The container for the one-function (false) or two-function (true) patch.
fn file(two: bool) -> &'static str {
    if two {
        SWITCH_PATCH
    } else {
        ONE
    }
}

/// Checks that the target runs the new or old code of both functions:
/// bench_fn is patched by both containers, bench_fn2 by the two-function
/// one only.
fn check(t: &mut Proc, two: bool, applied: bool) -> Result<(), String> {
    t.expect("call", if applied { "3" } else { "2" })?;
    t.expect("call2", if applied && two { "21" } else { "11" })
}

/// The `code writes: N` of `ulp trigger -v`.
fn code_writes(r: &Ran) -> Result<f64, String> {
    r.stdout
        .lines()
        .find_map(|l| {
            let rest = l.trim().strip_prefix("code writes: ")?;
            rest.split(|c: char| !c.is_ascii_digit())
                .next()?
                .parse()
                .ok()
        })
        .ok_or_else(|| format!("no `code writes` in `ulp trigger -v`: {}", r.stdout))
}

/// The in-tool total of `ulp trigger -v`'s phases line.
fn in_tool(r: &Ran) -> Result<f64, String> {
    parse_phases(&r.stdout)?
        .into_iter()
        .find_map(|(n, s)| (n == "total").then_some(s))
        .ok_or_else(|| format!("no total phase in: {}", r.stdout))
}

pub fn run(kit: &Kit, cfg: &Config, rows: &mut Vec<Row>) -> Result<(), String> {
    // [one function, two functions]
    let mut apply: [Vec<f64>; 2] = Default::default();
    let mut revert: [Vec<f64>; 2] = Default::default();
    let mut total: [Vec<f64>; 2] = Default::default();
    let mut writes = [0.0; 2];
    let reps = cfg.reps(40, 5);
    for i in 0..reps {
        for two in order(i) {
            let mut t = kit.start_target("bench_target", &[])?;
            check(&mut t, two, false)?;
            let r = kit.trigger_file(t.pid, false, &["-v", NONE], file(two))?;
            apply[two as usize].push(r.elapsed.as_secs_f64());
            total[two as usize].push(in_tool(&r)?);
            writes[two as usize] = code_writes(&r)?;
            check(&mut t, two, true)?;
            let r = kit.trigger_file(t.pid, true, &[NONE], file(two))?;
            revert[two as usize].push(r.elapsed.as_secs_f64());
            check(&mut t, two, false)?;
        }
    }
    // The plain plan of two functions would be 4 writes (a stub and an
    // entry jump each); the switch plan adds the slots and the flag, and
    // re-points each stub a second time.
    if writes[1] <= 2.0 * writes[0] {
        return Err(format!(
            "the two-function apply made {} code writes, the one-function one {}: no switch plan?",
            writes[1], writes[0]
        ));
    }
    let how = format!(
        "{reps} fresh targets each, `ulp trigger -v -p PID` end to end, the two-function patch (bench_fn and bench_fn2) interleaved with the one-function patch of the latency rows (baseline); code writes per apply: {} (2 functions) against {} (1)",
        writes[1], writes[0]
    );
    rows.push(
        Row::new(
            "apply, 2 functions (switch plan): median",
            Unit::Secs,
            median(&apply[1]),
        )
        .baseline(median(&apply[0]))
        .samples(&apply[1])
        .extra("code_writes", writes[1])
        .extra("baseline_code_writes", writes[0])
        .note(how),
    );
    rows.push(
        Row::new(
            "apply, 2 functions (switch plan): p90",
            Unit::Secs,
            percentile(&apply[1], 90.0),
        )
        .baseline(percentile(&apply[0], 90.0)),
    );
    rows.push(
        Row::new(
            "apply, 2 functions (switch plan): in-tool median",
            Unit::Secs,
            median(&total[1]),
        )
        .baseline(median(&total[0]))
        .samples(&total[1])
        .note("the `total` phase of the same applies (find to end of the operation, without ulp's own start and exit); baseline: the one-function applies'"),
    );
    rows.push(
        Row::new(
            "revert, 2 functions (switch plan): median",
            Unit::Secs,
            median(&revert[1]),
        )
        .baseline(median(&revert[0]))
        .samples(&revert[1])
        .note("`ulp trigger --revert` of the same targets; baseline: the one-function reverts"),
    );

    // The pause, in one target with the probe and 16 idle threads.
    let reps = cfg.reps(30, 3);
    let mut t = kit.start_target("bench_target", &["-p", "-t", "16"])?;
    std::thread::sleep(Duration::from_millis(200));
    let mut gap: [Vec<f64>; 2] = Default::default();
    let mut alone = Vec::new();
    let mut window = Duration::from_millis(5);
    for i in 0..reps {
        t.expect("reset", "ok")?;
        std::thread::sleep(window);
        alone.push(read_gap(&mut t)?);
        for two in order(i) {
            for revert in [false, true] {
                t.expect("reset", "ok")?;
                let r = kit.trigger_file(t.pid, revert, &[NONE], file(two))?;
                gap[two as usize].push(read_gap(&mut t)?);
                window = r.elapsed;
                check(&mut t, two, !revert)?;
            }
        }
    }
    drop(t);
    let (v, b, a) = (median(&gap[1]), median(&gap[0]), median(&alone));
    rows.push(
        Row::new(
            "pause, 16 threads idle, 2 functions (switch plan): median",
            Unit::Secs,
            v,
        )
        .baseline(b)
        .samples(&gap[1])
        .extra("p90", percentile(&gap[1], 90.0))
        .extra("baseline_p90", percentile(&gap[0], 90.0))
        .extra("probe_alone_median", a)
        .extra("net_median", v - a)
        .note(format!(
            "one target (probe + 16 idle threads), {reps} rounds of apply + revert of each patch in alternating order, longest probe gap per trigger; baseline = the one-function patch's in the same rounds; the probe alone over the same window: {:.0} µs",
            a * 1e6
        )),
    );
    Ok(())
}

//! Measure 2: the pause a target feels. A probe thread in the target spins
//! reading CLOCK_MONOTONIC and keeps the longest gap between two reads
//! (fixtures/bench/bench_target.c). For each trigger (apply, then revert)
//! the gap is reset, `ulp trigger` runs, and the longest gap is read back.
//! The baseline is the same probe over a window of the same length with no
//! trigger: what the scheduler alone takes from it on this machine.
//!
//! With 1 thread the probe is the target's only thread, so it is also the
//! thread ulp runs the runtime call on: its gap is the whole take-over.
//! With N >= 2 the main thread serves commands blocked in read(), one
//! thread probes and N - 2 block (idle) or spin under SCHED_IDLE (busy).

use std::time::Duration;

use crate::kit::Kit;
use crate::report::{median, percentile, Row, Target, Unit};
use crate::Config;

/// The probe's longest gap since the last reset, in seconds.
pub fn read_gap(t: &mut crate::procs::Proc) -> Result<f64, String> {
    let a = t.ask("gap")?;
    let ns: f64 = a
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("pid {}: bad gap answer {a:?}", t.pid))?;
    Ok(ns * 1e-9)
}

pub fn run(kit: &Kit, cfg: &Config, rows: &mut Vec<Row>) -> Result<(), String> {
    let reps = cfg.reps(40, 3);
    // (threads, busy)
    let configs = [
        (1, false),
        (16, false),
        (16, true),
        (128, false),
        (128, true),
    ];
    for (n, busy) in configs {
        let nt = n.to_string();
        let mut args = vec!["-p", "-t", &nt];
        if busy {
            args.push("-b");
        }
        let mut t = kit.start_target("bench_target", &args)?;
        // Let every thread reach its loop or its read().
        std::thread::sleep(Duration::from_millis(200));
        let (mut base, mut hit) = (Vec::new(), Vec::new());
        // With busy threads, the gap the probe sees while a `ulp
        // --version` starts and exits: what the tool's mere process takes
        // from the probe on a machine whose CPUs are all taken.
        let mut tool_alone = Vec::new();
        // Per trigger: the median and the longest hold of one thread by
        // the transition's per-thread checks (`-v`).
        let (mut hold_median, mut hold_max) = (Vec::new(), Vec::new());
        let mut window = Duration::from_millis(5);
        for _ in 0..reps {
            t.expect("reset", "ok")?;
            std::thread::sleep(window);
            base.push(read_gap(&mut t)?);
            if busy {
                t.expect("reset", "ok")?;
                kit.ulp(&["--version"])?;
                tool_alone.push(read_gap(&mut t)?);
            }
            for revert in [false, true] {
                t.expect("reset", "ok")?;
                let r = kit.trigger_with(t.pid, revert, &["-v"])?;
                hit.push(read_gap(&mut t)?);
                if let Some((m, x)) = transition_holds(&r.stdout) {
                    hold_median.push(m);
                    hold_max.push(x);
                }
                window = r.elapsed;
                t.expect("call", if revert { "2" } else { "3" })?;
            }
        }
        drop(t);
        let label = match (n, busy) {
            (1, _) => "pause, 1 thread (the probe)".to_string(),
            (n, false) => format!("pause, {n} threads idle"),
            (n, true) => format!("pause, {n} threads busy"),
        };
        let (v, b) = (median(&hit), median(&base));
        let libpulp = match n {
            1 => "libpulp: 0.63 ms",
            16 => "libpulp: 0.77 ms",
            _ => "libpulp: 1.8 ms",
        };
        let mut row = Row::new(format!("{label}: median"), Unit::Secs, v)
            .baseline(b)
            .samples(&hit)
            .extra("p90", percentile(&hit, 90.0))
            .extra("min", percentile(&hit, 0.0))
            .extra("baseline_p90", percentile(&base, 90.0))
            .extra("net_median", v - b)
            .note(format!(
                "{reps} applies + {reps} reverts, longest probe gap per trigger; baseline = probe alone over the same window; net of baseline {:.0} µs; {libpulp}",
                (v - b) * 1e6
            ));
        // Issue #14: 16 idle threads at most 100 µs; 16 busy ones keep the
        // earlier 150 µs; 128 threads at most 600 µs.
        let limit = match (n, busy) {
            (16, false) => Some(100e-6),
            (16, true) => Some(150e-6),
            (128, _) => Some(600e-6),
            _ => None,
        };
        if let Some(limit) = limit {
            row = row.target(Target::AtMost(limit));
            // A clear miss stays a miss; a miss that the probe's own noise
            // could explain is said to be one.
            if v > limit && v - b <= limit && b >= limit {
                row = row.verdict(format!(
                    "inconclusive: the probe alone already sees {:.0} µs",
                    b * 1e6
                ));
            } else if v > limit && v - b <= limit {
                row = row.verdict(format!(
                    "MISSED by {:.0} µs (met net of probe baseline)",
                    (v - limit) * 1e6
                ));
            }
        }
        rows.push(row);
        if busy && !tool_alone.is_empty() {
            rows.push(
                Row::new(
                    format!("{label}: `ulp --version` alone, median"),
                    Unit::Secs,
                    median(&tool_alone),
                )
                .baseline(b)
                .samples(&tool_alone)
                .note(format!(
                    "{reps} runs of `ulp --version` (start and exit, no process touched), longest probe gap during each: the share of the row above that the tool's own process takes from a probe whose CPUs are all busy"
                )),
            );
        }
        if n > 1 && !busy && !hold_median.is_empty() {
            let m = median(&hold_median);
            rows.push(
                Row::new(
                    format!("transition, {n} threads idle: one thread held, median"),
                    Unit::Secs,
                    m,
                )
                .samples(&hold_median)
                .extra("max", percentile(&hold_max, 100.0))
                .extra("max_median", median(&hold_max))
                .note(format!(
                    "per trigger, the median (and longest) time one thread is stopped for its own \
                     check (stop, registers, unwind, release) by the per-thread transition; \
                     longest of all triggers {:.0} µs, median of each trigger's longest {:.0} µs",
                    percentile(&hold_max, 100.0) * 1e6,
                    median(&hold_max) * 1e6
                )),
            );
        }
    }
    Ok(())
}

/// The `-v` line `transition: N threads checked one at a time (each held
/// X ms median, Y ms at most), ...`: (median, longest) in seconds.
fn transition_holds(out: &str) -> Option<(f64, f64)> {
    let line = out.lines().find(|l| l.contains("transition: "))?;
    let after = line.split("each held ").nth(1)?;
    let mut words = after.split_whitespace();
    let m: f64 = words.next()?.parse().ok()?;
    let x: f64 = after
        .split("median, ")
        .nth(1)?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    Some((m * 1e-3, x * 1e-3))
}

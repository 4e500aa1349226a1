//! Measure 8: loading the runtime into a busy process that was started
//! without it (`ulp set_patchable -p PID --load-runtime --runtime PATH
//! enable`). Each target is a fresh bench_target with the probe and 16
//! threads, 14 of them spinning (the runtime loads once per process), run
//! WITHOUT LD_PRELOAD. For each: VmRSS and Private_Dirty before, the
//! probe reset, the load timed end to end, the probe's longest gap read
//! back, the memory again; then the probe alone over a window of the same
//! length (the baseline; before the load on every other target, the window
//! then being the previous load's time). Afterwards the runtime must be in
//! /proc/PID/maps and the bench patch must apply (`call` answers 3).

use std::time::Duration;

use crate::kit::Kit;
use crate::pause::read_gap;
use crate::preload::proc_kib;
use crate::procs::Proc;
use crate::report::{median, percentile, Row, Unit};
use crate::Config;

/// Whether the process maps `path`.
fn maps(pid: i32, path: &str) -> Result<bool, String> {
    let m = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|e| format!("reading /proc/{pid}/maps: {e}"))?;
    Ok(m.lines().any(|l| l.ends_with(path)))
}

/// (VmRSS, Private_Dirty) in kB.
fn memory(pid: i32) -> Result<(f64, f64), String> {
    Ok((
        proc_kib(pid, "status", "VmRSS:")?,
        proc_kib(pid, "smaps_rollup", "Private_Dirty:")?,
    ))
}

/// The probe alone over `window`.
fn probe_alone(t: &mut Proc, window: Duration) -> Result<f64, String> {
    t.expect("reset", "ok")?;
    std::thread::sleep(window);
    read_gap(t)
}

pub fn run(kit: &Kit, cfg: &Config, rows: &mut Vec<Row>) -> Result<(), String> {
    let reps = cfg.reps(20, 3);
    let runtime = kit.runtime.to_string_lossy().into_owned();
    let (mut start, mut time, mut gap, mut alone) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut rss, mut private) = (Vec::new(), Vec::new());
    let mut window = None;
    for i in 0..reps {
        let r = kit.ulp(&["--version"])?;
        if r.code != 0 {
            return Err(format!("ulp --version exited {}", r.code));
        }
        start.push(r.elapsed.as_secs_f64());
        let window_now = window.unwrap_or(r.elapsed);

        let mut cmd = kit.command("bench_target", false);
        cmd.args(["-p", "-t", "16", "-b"]);
        let mut t = Proc::start(cmd, true)?;
        // Let every thread reach its loop or its read().
        std::thread::sleep(Duration::from_millis(200));
        if maps(t.pid, "libpulp.so.0")? {
            return Err(format!("pid {} has a runtime before the load", t.pid));
        }
        t.expect("call", "2")?;
        if i % 2 == 1 {
            alone.push(probe_alone(&mut t, window_now)?);
        }
        let before = memory(t.pid)?;
        t.expect("reset", "ok")?;
        let p = t.pid.to_string();
        let r = kit.ulp(&[
            "set_patchable",
            "-p",
            &p,
            "--load-runtime",
            "--runtime",
            &runtime,
            "enable",
        ])?;
        gap.push(read_gap(&mut t)?);
        if r.code != 0 || !r.stderr.contains("libpulp.so.0 loaded") {
            return Err(format!(
                "ulp set_patchable -p {p} --load-runtime exited {}: {}",
                r.code,
                r.both().trim()
            ));
        }
        time.push(r.elapsed.as_secs_f64());
        window = Some(r.elapsed);
        let after = memory(t.pid)?;
        rss.push(after.0 - before.0);
        private.push(after.1 - before.1);
        if !maps(t.pid, &runtime)? {
            return Err(format!(
                "pid {}: {runtime} not in its maps after the load",
                t.pid
            ));
        }
        if i % 2 == 0 {
            alone.push(probe_alone(&mut t, r.elapsed)?);
        }
        kit.trigger(t.pid, false)?;
        t.expect("call", "3")?;
    }
    let (v, b) = (median(&gap), median(&alone));
    rows.push(
        Row::new("load-runtime into a busy process: pause median", Unit::Secs, v)
            .baseline(b)
            .samples(&gap)
            .extra("p90", percentile(&gap, 90.0))
            .extra("baseline_p90", percentile(&alone, 90.0))
            .extra("net_median", v - b)
            .note(format!(
                "{reps} fresh targets without LD_PRELOAD (probe + 16 threads, 14 spinning under SCHED_IDLE), longest probe gap during `ulp set_patchable -p PID --load-runtime enable`; baseline = probe alone over the same window; net of baseline {:.0} µs",
                (v - b) * 1e6
            )),
    );
    rows.push(
        Row::new("load-runtime: time (median)", Unit::Secs, median(&time))
            .baseline(median(&start))
            .samples(&time)
            .extra("p90", percentile(&time, 90.0))
            .note("the same loads, end to end; baseline = `ulp --version` start+exit, once before each target"),
    );
    rows.push(
        Row::new("load-runtime: resident memory added", Unit::KiB, median(&rss))
            .samples(&rss)
            .note(format!(
                "VmRSS of the target after the load less before, median of {reps} targets (the preload rows: the runtime preloaded at start)"
            )),
    );
    rows.push(
        Row::new(
            "load-runtime: private dirty memory added",
            Unit::KiB,
            median(&private),
        )
        .samples(&private)
        .note("Private_Dirty of /proc/PID/smaps_rollup after the load less before, same targets"),
    );
    Ok(())
}

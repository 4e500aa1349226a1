//! Measure 4: what one call of a function costs, built without padding,
//! padded but unpatched, and patched.
//!
//! Instruction counts come from callgrind (perf's hardware counters are
//! often unavailable in virtual machines, and valgrind cannot run a
//! process ptrace patches): fixtures/bench/callcost.c calls bench_fn N
//! times through the PLT, and the per-call count is the difference between
//! two values of N divided by their difference, so start-up cancels out.
//! The patched state is reproduced in-process: the program writes the very
//! bytes ulp writes, in the stub form ulp wrote (read here first from a
//! live process patched by the real ulp: the direct `e9 <rel32>` when the
//! new function is within ±2 GiB, else `ff 25 00 00 00 00 <abs64>`).
//! `--branch-sim=yes` also counts indirect branches; the PLT's `jmp *GOT`
//! is one per call in every state.
//!
//! Times are measured natively (no valgrind), the three states interleaved.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::process::Command;

use crate::kit::{Kit, TOOL_TIMEOUT};
use crate::procs;
use crate::report::{median, Row, Target, Unit};
use crate::Config;

/// What ulp wrote over bench_fn in a live process.
struct LiveForm {
    hex: String,
    /// The stub's form, as callcost.c names it (`direct`, `absolute`), when
    /// the bytes are one of ulp's stubs followed by the `eb f0` entry jump.
    form: Option<&'static str>,
    /// The stub jumps into the mapped live patch.
    into_patch: bool,
}

/// The form and destination of the stub at `stub` followed by the entry
/// jump, in the 16 bytes `b` from `stub`: `e9 <rel32>` and 9 NOPs, or
/// `ff 25 00 00 00 00 <abs64>`; then `eb f0`.
pub fn decode_stub(stub: u64, b: &[u8; 16]) -> Option<(&'static str, u64)> {
    if b[14..] != [0xeb, 0xf0] {
        return None;
    }
    if b[..6] == [0xff, 0x25, 0, 0, 0, 0] {
        let to = u64::from_le_bytes(b[6..14].try_into().ok()?);
        return Some(("absolute", to));
    }
    if b[0] == 0xe9 && b[5..14].iter().all(|&x| x == 0x90) {
        let rel = i32::from_le_bytes(b[1..5].try_into().ok()?);
        return Some((
            "direct",
            stub.wrapping_add(5).wrapping_add(rel as i64 as u64),
        ));
    }
    None
}

fn live_form(kit: &Kit) -> Result<LiveForm, String> {
    let mut t = kit.start_target("bench_target", &[])?;
    let a = t.ask("addr")?;
    let addr = u64::from_str_radix(a.trim().trim_start_matches("0x"), 16)
        .map_err(|_| format!("bad address answer {a:?}"))?;
    kit.trigger(t.pid, false)?;
    let mem = File::open(format!("/proc/{}/mem", t.pid))
        .map_err(|e| format!("opening /proc/{}/mem: {e}", t.pid))?;
    let mut b = [0u8; 16];
    mem.read_exact_at(&mut b, addr - 14)
        .map_err(|e| format!("reading pid {} at {:#x}: {e}", t.pid, addr - 14))?;
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", t.pid)).unwrap_or_default();
    kit.trigger(t.pid, true)?;
    let decoded = decode_stub(addr - 14, &b);
    let to = decoded.map_or(0, |(_, to)| to);
    let into_patch = decoded.is_some()
        && maps.lines().any(|l| {
            let Some((range, rest)) = l.split_once(' ') else {
                return false;
            };
            let Some((lo, hi)) = range.split_once('-') else {
                return false;
            };
            let lo = u64::from_str_radix(lo, 16).unwrap_or(u64::MAX);
            let hi = u64::from_str_radix(hi, 16).unwrap_or(0);
            rest.ends_with("bench_livepatch.so") && lo <= to && to < hi
        });
    Ok(LiveForm {
        hex: b
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" "),
        form: decoded.map(|(form, _)| form),
        into_patch,
    })
}

/// Callgrind's totals for one run: (instructions, indirect branches).
fn callgrind(kit: &Kit, program: &str, n: u64, args: &[String]) -> Result<(f64, f64), String> {
    let mut cmd = Command::new("valgrind");
    cmd.current_dir(&kit.dir)
        .env_remove("LD_PRELOAD")
        .args([
            "--tool=callgrind",
            "--branch-sim=yes",
            "--callgrind-out-file=/dev/null",
        ])
        .arg(kit.path(program))
        .arg(n.to_string())
        .args(args);
    let r = procs::run(&mut cmd, TOOL_TIMEOUT, Some(&kit.dir))?;
    if r.code != 0 {
        return Err(format!(
            "valgrind {program} {n} exited {}: {}",
            r.code,
            r.stderr.trim()
        ));
    }
    collected(&r.stderr).ok_or_else(|| format!("no callgrind totals in: {}", r.stderr.trim()))
}

/// Parses callgrind's "Collected : Ir Bc Bcm Bi Bim" line.
pub fn collected(stderr: &str) -> Option<(f64, f64)> {
    let line = stderr.lines().find(|l| l.contains("Collected :"))?;
    let nums: Vec<f64> = line
        .split(':')
        .nth(1)?
        .split_whitespace()
        .filter_map(|s| s.parse().ok())
        .collect();
    Some((*nums.first()?, nums.get(3).copied().unwrap_or(f64::NAN)))
}

/// Whether `valgrind --version` runs.
pub fn have_valgrind(kit: &Kit) -> bool {
    procs::run(
        Command::new("valgrind").arg("--version"),
        TOOL_TIMEOUT,
        Some(&kit.dir),
    )
    .is_ok_and(|r| r.code == 0)
}

/// The state of a call through a GOT slot `--redirect-got` moved.
const GOT_STATE: &str = "patched, GOT redirected";

/// What `ulp trigger --redirect-got -v` says of the GOT slots it moved in
/// a live bench_target (which calls bench_fn through its PLT).
fn live_got(kit: &Kit) -> String {
    let moved = kit.start_target("bench_target", &[]).and_then(|mut t| {
        t.expect("call", "2")?;
        let r = kit.trigger_with(t.pid, false, &["--redirect-got", "-v"])?;
        t.expect("call", "3")?;
        kit.trigger(t.pid, true)?;
        t.expect("call", "2")?;
        Ok(r.stdout)
    });
    match moved {
        Ok(out) => out
            .lines()
            .find_map(|l| l.trim().strip_prefix("GOT slots: "))
            .map(|l| {
                format!(
                    "in a live bench_target, `ulp trigger --redirect-got -v` said: GOT slots: {l}"
                )
            })
            .unwrap_or_else(|| "ulp printed no GOT line in a live bench_target".into()),
        Err(e) => format!("live --redirect-got failed: {e}"),
    }
}

pub fn run(kit: &Kit, cfg: &Config, rows: &mut Vec<Row>) -> Result<(), String> {
    let patch = kit.patch.to_string_lossy().into_owned();
    let got_note = live_got(kit);
    let live = live_form(kit);
    // The form ulp wrote; callcost.c applies ulp's rule itself otherwise.
    let (form, live_note) = match &live {
        Ok(LiveForm {
            hex,
            form: Some(form),
            into_patch: true,
        }) => (
            *form,
            format!(
                "ulp wrote [{hex}] ({form} stub) over bench_fn-14..+2 in a live process; callcost.c writes the same form in-process"
            ),
        ),
        Ok(f) => (
            "auto",
            format!(
                "ulp wrote [{}] (not a stub of ulp's then eb f0, or not into the patch): callcost.c writes ulp's choice of form, which may not match",
                f.hex
            ),
        ),
        Err(e) => (
            "auto",
            format!("could not read ulp's bytes in a live process: {e}"),
        ),
    };
    let states: [(&str, &str, Vec<String>); 4] = [
        ("built without padding", "callcost_nopad", vec![]),
        ("padded, unpatched", "callcost", vec![]),
        (
            "patched",
            "callcost",
            vec!["patch".into(), patch.clone(), form.into()],
        ),
        (
            GOT_STATE,
            "callcost",
            vec!["patch".into(), patch, form.into(), "got".into()],
        ),
    ];

    // Instructions.
    if have_valgrind(kit) {
        let (n1, n2) = if cfg.quick {
            (20_000, 120_000)
        } else {
            (100_000, 1_100_000)
        };
        let mut per = Vec::new();
        for (_, prog, args) in &states {
            let (i1, b1) = callgrind(kit, prog, n1, args)?;
            let (i2, b2) = callgrind(kit, prog, n2, args)?;
            let d = (n2 - n1) as f64;
            per.push(((i2 - i1) / d, (b2 - b1) / d));
        }
        let (base_i, base_b) = per[0];
        for ((name, _, _), (i, b)) in states.iter().zip(&per) {
            let mut row = Row::new(format!("call, {name}: instructions"), Unit::Instr, *i)
                .extra("indirect_branches_per_call", *b)
                .note("callgrind, per call of bench_fn through the PLT, loop included");
            if *name != "built without padding" {
                row = row.baseline(base_i);
            }
            if *name == GOT_STATE {
                // Over the unpatched call: the slot leads straight to the
                // new function, so nothing should be added.
                let (extra, extra_ind) = (i - per[1].0, b - per[1].1);
                let ok = extra <= 0.05 && extra_ind < 0.5;
                row = row
                    .baseline(per[1].0)
                    .target(Target::Custom("+0 instr over padded, unpatched".into()))
                    .verdict(if ok {
                        "met".to_string()
                    } else {
                        format!("MISSED: +{extra:.1} instr, +{extra_ind:.0} indirect jump")
                    })
                    .note(format!(
                        "callgrind; the patched state with the program's GOT slot of bench_fn pointed at \
                         new_bench_fn, as `ulp trigger --redirect-got` does ({got_note}); baseline: padded, unpatched"
                    ));
            }
            if *name == "patched" {
                let extra = i - base_i;
                let extra_ind = b - base_b;
                let ok = extra <= 2.05 && extra_ind < 0.5;
                row = row
                    .target(Target::Custom("≤ +2 instr, no ind. jump".into()))
                    .verdict(if ok {
                        "met".to_string()
                    } else if extra <= 2.05 {
                        format!("MISSED: +{extra:.0} instr but +{extra_ind:.0} indirect jump")
                    } else {
                        format!("MISSED: +{extra:.1} instr, +{extra_ind:.0} indirect jump")
                    })
                    .note(format!(
                        "callgrind; {live_note}; libpulp: +2 instructions, one an indirect jump"
                    ));
            }
            rows.push(row);
        }
        rows.push(
            Row::new("call, patched: indirect branches", Unit::Branches, per[2].1)
                .baseline(base_b)
                .note("callgrind --branch-sim=yes; the PLT's jmp *GOT is the one of the baseline"),
        );
    } else {
        rows.push(Row::missing(
            "call: instructions",
            Unit::Instr,
            "valgrind is not installed",
        ));
    }

    // Times, natively, the three states interleaved.
    let n: u64 = if cfg.quick { 10_000_000 } else { 50_000_000 };
    let reps = cfg.reps(9, 3);
    let mut ns: [Vec<f64>; 4] = Default::default();
    for _ in 0..reps {
        for (k, (_, prog, args)) in states.iter().enumerate() {
            let mut cmd = kit.command(prog, false);
            cmd.arg(n.to_string()).args(args);
            let r = procs::run(&mut cmd, TOOL_TIMEOUT, Some(&kit.dir))?;
            let v: f64 = r
                .stdout
                .split_whitespace()
                .next()
                .and_then(|s| s.parse().ok())
                .filter(|_| r.code == 0)
                .ok_or_else(|| format!("{prog} failed: {}", r.both().trim()))?;
            ns[k].push(v * 1e-9);
        }
    }
    let base = median(&ns[0]);
    for (k, (name, _, _)) in states.iter().enumerate() {
        let mut row = Row::new(format!("call, {name}: time"), Unit::Secs, median(&ns[k]))
            .samples(&ns[k])
            .note(format!(
                "{n} calls per run, median of {reps} runs, interleaved"
            ));
        if k > 0 {
            row = row.baseline(base);
        }
        if *name == GOT_STATE {
            row = row.baseline(median(&ns[1])).note(format!(
                "{n} calls per run, median of {reps} runs, interleaved; baseline: padded, unpatched"
            ));
        }
        rows.push(row);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::decode_stub;

    #[test]
    fn stubs_decode() {
        let stub = 0x7f00_0000_1000u64;
        let mut direct = [0x90u8; 16];
        direct[0] = 0xe9;
        direct[1..5].copy_from_slice(&(-0x20i32).to_le_bytes());
        direct[14..].copy_from_slice(&[0xeb, 0xf0]);
        assert_eq!(
            decode_stub(stub, &direct),
            Some(("direct", stub + 5 - 0x20))
        );
        let mut absolute = [0u8; 16];
        absolute[..2].copy_from_slice(&[0xff, 0x25]);
        absolute[6..14].copy_from_slice(&0x1234_5678u64.to_le_bytes());
        absolute[14..].copy_from_slice(&[0xeb, 0xf0]);
        assert_eq!(
            decode_stub(stub, &absolute),
            Some(("absolute", 0x1234_5678))
        );
        absolute[15] = 0xec;
        assert_eq!(decode_stub(stub, &absolute), None);
        direct[13] = 0xcc;
        assert_eq!(decode_stub(stub, &direct), None);
    }
}

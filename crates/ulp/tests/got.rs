//! `ulp trigger --redirect-got`: the GOT slots that resolve to a patched
//! function are pointed at the new function, and every revert puts them
//! back. Real processes (fixtures/got_prog.c, calling libulpdemo's
//! demo_answer through its PLT), real ptrace; each slot is read from
//! /proc/PID/mem.

mod common;

use std::os::unix::fs::FileExt;
use std::process::Command;

use common::*;
use serde_json::Value;

fn start(demo: &Demo, prog: &str) -> Target {
    copy_files(&fixtures_dir(), demo.dir.path(), &[prog]);
    let mut cmd = Command::new(demo.dir.join(prog));
    cmd.current_dir(demo.dir.path())
        .env("LD_PRELOAD", &demo.runtime)
        .env_remove("LD_BIND_NOW");
    Target::spawn(cmd)
}

fn hex(s: &str) -> u64 {
    u64::from_str_radix(s.trim().trim_start_matches("0x"), 16)
        .unwrap_or_else(|_| panic!("not a hex address: {s:?}"))
}

/// The 8 bytes at `addr` in process `pid`.
fn word(pid: i32, addr: u64) -> u64 {
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).expect("opening /proc/PID/mem");
    let mut b = [0u8; 8];
    f.read_exact_at(&mut b, addr).expect("reading the slot");
    u64::from_le_bytes(b)
}

/// The path of the file mapped at `addr` in `pid`.
fn mapped_at(pid: i32, addr: u64) -> String {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let range = f.next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        if (hex(a)..hex(b)).contains(&addr) {
            return f.nth(4).unwrap_or("").to_string();
        }
    }
    String::new()
}

/// `ulp trigger --json ARGS` in the demo's directory: its one result.
fn trigger_json(demo: &Demo, args: &[&str]) -> Value {
    let mut all = vec!["trigger", "--json"];
    all.extend_from_slice(args);
    let out = demo.ulp_ok(&all);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let r = v["processes"][0]["results"][0].clone();
    assert!(
        matches!(r["status"].as_str(), Some("applied" | "reverted")),
        "{out}"
    );
    r
}

#[test]
fn bind_now_slot_moves_to_the_new_function_and_back() {
    let demo = Demo::new("got-now");
    let mut t = start(&demo, "got_prog_now");
    let pid = t.pid.to_string();
    let slot = hex(&t.ask("slot"));
    let old = hex(&t.ask("old"));
    assert_ne!(slot, 0, "the program's JUMP_SLOT of demo_answer");
    assert_eq!(word(t.pid, slot), old, "bound at load (-z now)");
    assert_eq!(t.ask("answer"), "1");

    let r = trigger_json(&demo, &["-p", &pid, "--redirect-got", "demo_livepatch.so"]);
    assert!(r["got_slots"].as_u64().unwrap() >= 1, "{r}");
    let new = word(t.pid, slot);
    assert_ne!(new, old);
    assert!(
        mapped_at(t.pid, new).ends_with("/demo_livepatch.so"),
        "slot points at {new:#x}, in '{}'",
        mapped_at(t.pid, new)
    );
    assert_eq!(t.ask("answer"), "2", "through the moved slot");
    assert_eq!(
        t.ask("ptr"),
        "2",
        "a pointer taken before: the entry redirect"
    );
    assert_eq!(t.ask("format"), "lib says 2", "inside the library");

    // A plain revert (no option) puts the slot back.
    let r = trigger_json(&demo, &["-p", &pid, "--revert", "demo_livepatch.so"]);
    assert!(r["got_slots_restored"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(word(t.pid, slot), old);
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("ptr"), "1");

    // Without the option, nothing moves.
    let r = trigger_json(&demo, &["-p", &pid, "demo_livepatch.so"]);
    assert_eq!(r["got_slots"], 0, "{r}");
    assert_eq!(word(t.pid, slot), old);
    assert_eq!(t.ask("answer"), "2");
}

#[test]
fn lazy_slot_is_left_until_bound_then_moved() {
    let demo = Demo::new("got-lazy");
    let mut t = start(&demo, "got_prog_lazy");
    let pid = t.pid.to_string();
    let slot = hex(&t.ask("slot"));
    let old = hex(&t.ask("old"));
    let lazy = word(t.pid, slot);
    assert_ne!(lazy, old, "not bound before the first call");

    let out = demo.ulp_ok(&[
        "trigger",
        "-v",
        "-p",
        &pid,
        "--redirect-got",
        "demo_livepatch.so",
    ]);
    assert!(out.contains("GOT slots: "), "{out}");
    assert_eq!(word(t.pid, slot), lazy, "a lazy slot is left as it is");
    // Its first call binds it to the old entry, whose redirect applies.
    assert_eq!(t.ask("answer"), "2");
    assert_eq!(word(t.pid, slot), old);

    // Reverted and applied again: now bound, it moves.
    demo.ulp_ok(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(t.ask("answer"), "1");
    let r = trigger_json(&demo, &["-p", &pid, "--redirect-got", "demo_livepatch.so"]);
    assert!(r["got_slots"].as_u64().unwrap() >= 1, "{r}");
    assert!(mapped_at(t.pid, word(t.pid, slot)).ends_with("/demo_livepatch.so"));
    assert_eq!(t.ask("answer"), "2");
    demo.ulp_ok(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(word(t.pid, slot), old);
    assert_eq!(t.ask("answer"), "1");
}

#[test]
fn stacked_patches_move_the_slot_along_and_revert_all_restores_it() {
    let demo = Demo::new("got-stack");
    let mut t = start(&demo, "got_prog_now");
    let pid = t.pid.to_string();
    let slot = hex(&t.ask("slot"));
    let old = hex(&t.ask("old"));

    trigger_json(&demo, &["-p", &pid, "--redirect-got", "demo_livepatch.so"]);
    let first = word(t.pid, slot);
    assert!(mapped_at(t.pid, first).ends_with("/demo_livepatch.so"));
    // A newer patch, without the option: the slot goes back to the entry,
    // which leads to the newest code.
    let r = trigger_json(&demo, &["-p", &pid, "demo_livepatch2.so"]);
    assert!(r["got_slots_restored"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(word(t.pid, slot), old);
    assert_eq!(t.ask("answer"), "3");
    // Reverted and applied again with it: to the newest.
    demo.ulp_ok(&["trigger", "-p", &pid, "--revert", "demo_livepatch2.so"]);
    assert_eq!(t.ask("answer"), "2");
    trigger_json(&demo, &["-p", &pid, "--redirect-got", "demo_livepatch2.so"]);
    assert!(mapped_at(t.pid, word(t.pid, slot)).ends_with("/demo_livepatch2.so"));
    assert_eq!(t.ask("answer"), "3");
    // Reverting the newest re-points the slot's entry at the older patch:
    // the slot goes back to the entry.
    demo.ulp_ok(&["trigger", "-p", &pid, "--revert", "demo_livepatch2.so"]);
    assert_eq!(word(t.pid, slot), old);
    assert_eq!(t.ask("answer"), "2");
    trigger_json(&demo, &["-p", &pid, "--redirect-got", "demo_livepatch2.so"]);
    // --revert-all: every patch of the library goes, and the slot with it.
    let r = trigger_json(&demo, &["-p", &pid, "--revert-all=libulpdemo.so.1"]);
    assert!(r["got_slots_restored"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(word(t.pid, slot), old);
    assert_eq!(t.ask("answer"), "1");
    assert_eq!(t.ask("ptr"), "1");
}

#[test]
fn a_revert_killed_between_code_writes_leaves_no_slot_at_reverted_code() {
    // ULP_TEST_KILL_AFTER_WRITES=N: ulp SIGKILLs itself after N code words
    // (every thread stopped). The slots are put back before the first
    // code word: whatever N, the slot holds the old entry and every call
    // runs one whole version; the next trigger completes the code writes.
    use std::os::unix::process::ExitStatusExt;
    let demo = Demo::new("got-kill");
    let mut killed = 0;
    for n in 0..16u32 {
        let mut t = start(&demo, "got_prog_now");
        let pid = t.pid.to_string();
        let slot = hex(&t.ask("slot"));
        let old = hex(&t.ask("old"));
        trigger_json(&demo, &["-p", &pid, "--redirect-got", "demo_livepatch.so"]);
        assert_ne!(word(t.pid, slot), old);
        let st = Command::new(ulp_bin())
            .args(["trigger", "-p", &pid, "--revert", "demo_livepatch.so"])
            .current_dir(demo.dir.path())
            .env("ULP_TEST_KILL_AFTER_WRITES", n.to_string())
            .output()
            .expect("running ulp")
            .status;
        if st.signal() != Some(9) {
            assert!(st.success(), "{st:?}");
            assert_eq!(word(t.pid, slot), old);
            assert_eq!(t.ask("answer"), "1");
            break;
        }
        killed += 1;
        let ctx = format!("revert killed after {n} code words");
        if let Err(e) = settled(t.pid) {
            panic!("{ctx}: {e}");
        }
        assert_eq!(word(t.pid, slot), old, "{ctx}: the slot");
        let (a, p) = (t.ask("answer"), t.ask("ptr"));
        assert!(a == p && (a == "1" || a == "2"), "{ctx}: {a} {p}");
        // The next trigger completes the journal: the revert is done.
        demo.ulp(&["trigger", "-p", &pid, "--revert", "demo_livepatch.so"]);
        assert_eq!(t.ask("answer"), "1", "{ctx}: completed");
        assert_eq!(word(t.pid, slot), old, "{ctx}: completed");
    }
    assert!(killed > 0, "the revert was never killed");
}

#[test]
fn a_rewritten_entry_gets_its_slots_moved_and_put_back() {
    // unpadded_lib.so has no padding: its entry is rewritten (a jmp rel32,
    // perhaps through a far stub), and the slot goes where that leads.
    let dir = TempDir::new("got-rewrite");
    copy_files(
        &fixtures_dir(),
        dir.path(),
        &["unpadded_lib.so", "unpadded_prog", "unpadded_patch.so"],
    );
    let runtime = install_runtime(dir.path());
    for (name, new) in [("first", "new_up"), ("second", "new_up2")] {
        let container = format!("{name}.so");
        std::fs::copy(dir.join("unpadded_patch.so"), dir.join(&container)).unwrap();
        std::fs::write(
            dir.join(format!("{name}.dsc")),
            format!("{container}\n@unpadded_lib.so\nup_answer:{new}\n"),
        )
        .unwrap();
        let (code, out, err) = ulp(dir.path(), &["packer", &format!("{name}.dsc")]);
        assert_eq!(code, 0, "{out}{err}");
    }
    let mut cmd = Command::new(dir.join("unpadded_prog"));
    cmd.current_dir(dir.path()).env("LD_PRELOAD", &runtime);
    let mut t = Target::spawn(cmd);
    let pid = t.pid.to_string();
    // Bound (if lazily) by a first call.
    assert_eq!(t.ask("answer"), "42");
    let run = |args: &[&str]| -> Value {
        let mut all = vec!["trigger", "--json", "-p", &pid];
        all.extend_from_slice(args);
        let (code, out, err) = ulp(dir.path(), &all);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        let v: Value = serde_json::from_str(&out).unwrap();
        v["processes"][0]["results"][0].clone()
    };
    let r = run(&["--redirect-got", "first.so"]);
    assert!(r["got_slots"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(t.ask("answer"), "99");
    let r = run(&["--redirect-got", "second.so"]);
    assert!(r["got_slots_restored"].as_u64().unwrap() >= 1, "{r}");
    assert!(r["got_slots"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(t.ask("answer"), "100");
    let r = run(&["--revert", "second.so"]);
    assert!(r["got_slots_restored"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(t.ask("answer"), "99");
    let r = run(&["--revert", "first.so"]);
    assert_eq!(r["got_slots_restored"], 0, "{r}");
    assert_eq!(t.ask("answer"), "42");
}

/// Where `Interface::got_moved` lies in process `pid`.
fn got_moved_at(demo: &Demo, pid: i32) -> u64 {
    interface_at(demo, pid) + ulp_abi::offset::GOT_MOVED as u64
}

/// Where the runtime's block lies in process `pid`: its `__ulp_interface`
/// (from `nm -D` of its file) at the address its file is mapped from
/// offset 0.
fn interface_at(demo: &Demo, pid: i32) -> u64 {
    let runtime = std::fs::canonicalize(&demo.runtime).unwrap();
    let out = Command::new("nm")
        .args(["-D", "--defined-only"])
        .arg(&runtime)
        .output()
        .expect("running nm (binutils)");
    let nm = String::from_utf8_lossy(&out.stdout);
    let sym = nm
        .lines()
        .find(|l| l.ends_with(" __ulp_interface"))
        .and_then(|l| l.split_whitespace().next())
        .map(hex)
        .unwrap_or_else(|| panic!("no __ulp_interface in nm's output: {nm}"));
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let base = maps
        .lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let path = std::path::Path::new(f.get(5)?);
            (f[2] == "00000000" && std::fs::canonicalize(path).ok()? == runtime)
                .then(|| hex(f[0].split('-').next().unwrap()))
        })
        .unwrap_or_else(|| panic!("the runtime is not mapped: {maps}"));
    base + sym
}

/// Writes `bytes` at `addr` in process `pid` (`/proc/PID/mem`).
fn poke(pid: i32, addr: u64, bytes: &[u8]) {
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .expect("opening /proc/PID/mem for writing");
    f.write_all_at(bytes, addr).expect("writing the target");
}

#[test]
fn the_runtime_header_says_once_a_slot_may_have_moved() {
    // Interface::got_moved: 0 until a --redirect-got run moves a slot,
    // then 1 for good. While it is 0, a revert does not look for moved
    // slots in every loaded object (got.rs): the flag must be set before
    // the first slot moves, or that revert would leave it at reverted
    // code.
    let demo = Demo::new("got-flag");
    let mut t = start(&demo, "got_prog_now");
    let pid = t.pid.to_string();
    let slot = hex(&t.ask("slot"));
    let old = hex(&t.ask("old"));
    let flag = got_moved_at(&demo, t.pid);
    assert_eq!(word(t.pid, flag), 0, "a fresh process");

    trigger_json(&demo, &["-p", &pid, "demo_livepatch.so"]);
    let r = trigger_json(&demo, &["-p", &pid, "--revert", "demo_livepatch.so"]);
    assert_eq!(r["got_slots_restored"], 0, "{r}");
    assert_eq!(word(t.pid, flag), 0, "no slot moved without the option");
    assert_eq!(t.ask("answer"), "1");

    let r = trigger_json(&demo, &["-p", &pid, "--redirect-got", "demo_livepatch.so"]);
    assert!(r["got_slots"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(word(t.pid, flag), 1, "set with the first moved slot");
    assert_ne!(word(t.pid, slot), old);

    // A revert without the option finds the moved slot and puts it back;
    // the flag stays.
    let r = trigger_json(&demo, &["-p", &pid, "--revert", "demo_livepatch.so"]);
    assert!(r["got_slots_restored"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(word(t.pid, slot), old);
    assert_eq!(word(t.pid, flag), 1, "never cleared");
    assert_eq!(t.ask("answer"), "1");
}

#[test]
fn a_runtime_of_the_previous_protocol_is_patched_and_its_block_never_written_past_its_end() {
    // A process started before an upgrade runs the runtime of the ulp
    // before. Protocol 11's block is 12's without its last word
    // (got_moved): this ulp patches such a process, never writes that
    // word (there it is not the runtime's), and so looks for moved slots
    // at every revert. The runtime here is made to say 11: its layout is
    // 11's plus the word, which must stay as it was.
    let demo = Demo::new("got-proto11");
    let mut t = start(&demo, "got_prog_now");
    let pid = t.pid.to_string();
    let slot = hex(&t.ask("slot"));
    let old = hex(&t.ask("old"));
    let block = interface_at(&demo, t.pid);
    let version = block + ulp_abi::offset::VERSION as u64;
    let flag = block + ulp_abi::offset::GOT_MOVED as u64;
    assert_eq!(ulp_abi::OLDEST_PROTOCOL_READ, 11);
    assert_eq!(ulp_abi::GOT_MOVED_SINCE, 12);
    poke(t.pid, version, &11u32.to_le_bytes());

    let r = trigger_json(&demo, &["-p", &pid, "--redirect-got", "demo_livepatch.so"]);
    assert!(r["got_slots"].as_u64().unwrap() >= 1, "{r}");
    assert_ne!(word(t.pid, slot), old);
    assert_eq!(word(t.pid, flag), 0, "nothing written past 11's block");
    assert_eq!(t.ask("answer"), "2");
    let r = trigger_json(&demo, &["-p", &pid, "--revert", "demo_livepatch.so"]);
    assert!(r["got_slots_restored"].as_u64().unwrap() >= 1, "{r}");
    assert_eq!(word(t.pid, slot), old);
    assert_eq!(word(t.pid, flag), 0);
    assert_eq!(t.ask("answer"), "1");

    // Older than that: refused by name, the process untouched.
    poke(t.pid, version, &10u32.to_le_bytes());
    let (code, out, err) = demo.ulp(&["trigger", "-p", &pid, "demo_livepatch.so"]);
    assert_ne!(code, 0, "{out}{err}");
    let all = format!("{out}{err}");
    assert!(
        all.contains("speaks protocol version 10, this ulp speaks 11 to 12"),
        "{all}"
    );
    assert_eq!(t.ask("answer"), "1");
}

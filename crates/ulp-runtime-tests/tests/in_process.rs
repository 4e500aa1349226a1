//! The runtime driven in-process by a C harness that plays the tool's part
//! (no ptrace): it calls `__ulp_entry`, makes the returned writes itself
//! and calls the target's functions to see which code runs.

mod support;

use support::*;
use ulp_abi::{code, errors};

fn id_hex(id: u8) -> String {
    hex(&[id; 32])
}

fn calls(lines: &[String]) -> Vec<&str> {
    lines
        .iter()
        .filter(|l| {
            l.starts_with("answer=")
                || l.starts_with("bump=")
                || l.starts_with("call_secret=")
                || l.starts_with("get_tcounter=")
                || l.starts_with("thread=")
                || l.starts_with("prog_value=")
        })
        .map(String::as_str)
        .collect()
}

#[test]
fn apply_redirects_functions_and_references_and_revert_restores() {
    let f = fixtures();
    let v = &f.plain;
    let req = patch1_request(v, 1);
    let script = format!(
        "call answer\ncall bump\ncall call_secret\n\
         apply {}\n\
         call answer\ncall bump\ncall get_tcounter\ncall call_secret\ntcall bump\n\
         reg\nbytes answer\n\
         revert {}\n\
         call answer\ncall bump\ncall get_tcounter\ncall call_secret\n\
         reg\nbytes answer\n",
        req.display(),
        id_hex(1)
    );
    let out = run(v, &script, &[]);
    assert_eq!(
        calls(&out),
        [
            "answer=41",
            "bump=1",
            "call_secret=14",
            // Patched: the static and the thread-local counter both gain 10.
            "answer=42",
            "bump=11",
            "get_tcounter=11",
            "call_secret=200",
            // A new thread has its own tcounter: 0 + 10.
            "thread=21 tls=10",
            // Reverted.
            "answer=41",
            "bump=22",
            "get_tcounter=12",
            "call_secret=14",
        ],
        "{out:#?}"
    );
    let applied = results(&out, "apply");
    assert_eq!(applied[0].0, code::OK);
    // Switched at once: a guarded slot per function (three words each),
    // each stub pointed at its slot and its entry jump (nothing changes
    // yet), the flag (every function switches), then each stub straight
    // to its new function.
    assert_eq!(
        applied[0].2,
        "C8 C8 C8 C8 C8 C8 C8 C8 C8 S14 E2 S14 E2 S14 E2 F1 S14 S14 S14"
    );
    assert!(
        applied[0].1.starts_with("applied patch '")
            && applied[0]
                .1
                .ends_with("libtarget.so': 3 functions, 2 references"),
        "{}",
        applied[0].1
    );
    let reverted = results(&out, "revert");
    assert_eq!(reverted[0].0, code::OK);
    // The same backwards: new slots (from the new functions back to the
    // old code), each stub re-pointed at its slot, the flag (every
    // function switches back), then the entries back to the NOP.
    assert_eq!(
        reverted[0].2,
        "C8 C8 C8 C8 C8 C8 C8 C8 C8 S14 S14 S14 F1 E2 E2 E2"
    );
    let reg = with_prefix(&out, "reg ");
    assert_eq!(reg[0], "reg gen=2 count=1");
    assert_eq!(reg[1], "reg gen=4 count=0");
    let rec = with_prefix(&out, "rec ");
    assert_eq!(rec.len(), 1);
    assert!(rec[0].starts_with("rec id=01 nunits=3 at="), "{}", rec[0]);
    assert!(
        rec[0].contains(&format!("container={} ", f.patch1.display())),
        "{}",
        rec[0]
    );
    assert!(
        rec[0].contains(&format!("target={} ", v.lib.display())),
        "{}",
        rec[0]
    );
    assert!(
        rec[0].ends_with("comments= Fixes CVE-2099-0001.|"),
        "{}",
        rec[0]
    );
    let bytes = with_prefix(&out, "bytes answer:");
    // Redirected: stub then `jmp entry-14`. The container is mapped near
    // the library, so the stub is the direct `jmp rel32` and 9 NOPs.
    let direct_stub = |line: &str| {
        line.starts_with("bytes answer: e9 ") && line.contains(" 90 90 90 90 90 90 90 90 90 | ")
    };
    assert!(
        direct_stub(bytes[0]) && bytes[0].contains(" | eb f0 "),
        "{}",
        bytes[0]
    );
    // Reverted: the stub stays (a direct jump to the slot of the revert),
    // the entry is the 2-byte NOP.
    assert!(
        direct_stub(bytes[1]) && bytes[1].contains(" | 66 90 "),
        "{}",
        bytes[1]
    );
}

#[test]
fn endbr64_entries_are_patched_after_it() {
    let f = fixtures();
    let v = &f.cet;
    let req = patch1_request(v, 1);
    let script = format!(
        "bytes answer\napply {}\ncall answer\ncall bump\nbytes answer\nrevert {}\ncall answer\nbytes answer\n\
         apply {}\ncall answer\n",
        req.display(),
        id_hex(1),
        req.display()
    );
    let out = run(v, &script, &[]);
    assert_eq!(
        calls(&out),
        ["answer=42", "bump=10", "answer=41", "answer=42"],
        "{out:#?}"
    );
    let bytes = with_prefix(&out, "bytes answer:");
    assert!(bytes[0].ends_with("| f3 0f 1e fa 90 90"), "{}", bytes[0]);
    assert!(bytes[1].ends_with("| f3 0f 1e fa eb ec"), "{}", bytes[1]);
    assert!(bytes[2].ends_with("| f3 0f 1e fa 66 90"), "{}", bytes[2]);
    // Reapplied over the stub left by the revert.
    assert_eq!(results(&out, "apply")[1].0, code::OK);
}

/// Two patches of `answer`: the newest applied one wins; reverting either
/// one first leaves the other in charge.
#[test]
fn stacked_patches_revert_in_both_orders() {
    let f = fixtures();
    let v = &f.plain;
    let p1 = patch1_request(v, 1);
    let p2 = patch2_request(v, 2);
    // Newest first.
    let script = format!(
        "apply {p1}\ncall answer\napply {p2}\ncall answer\nrevert {i2}\ncall answer\nrevert {i1}\ncall answer\n",
        p1 = p1.display(),
        p2 = p2.display(),
        i1 = id_hex(1),
        i2 = id_hex(2)
    );
    let out = run(v, &script, &[]);
    assert_eq!(
        calls(&out),
        ["answer=42", "answer=43", "answer=42", "answer=41"]
    );
    let reverted = results(&out, "revert");
    // Back to patch 1: its stub is rewritten, the entry stays a jump.
    assert_eq!(reverted[0].2, "S14");
    // Patch 1 alone again: reverted at once.
    assert_eq!(
        reverted[1].2,
        "C8 C8 C8 C8 C8 C8 C8 C8 C8 S14 S14 S14 F1 E2 E2 E2"
    );

    // Oldest first.
    let script = format!(
        "apply {p1}\napply {p2}\ncall answer\nrevert {i1}\ncall answer\ncall bump\nrevert {i2}\ncall answer\n\
         apply {p2}\ncall answer\n",
        p1 = p1.display(),
        p2 = p2.display(),
        i1 = id_hex(1),
        i2 = id_hex(2)
    );
    let out = run(v, &script, &[]);
    assert_eq!(
        calls(&out),
        ["answer=43", "answer=43", "bump=1", "answer=41", "answer=43"]
    );
    let reverted = results(&out, "revert");
    // answer stays with patch 2; bump and secret go back to the original,
    // together.
    assert_eq!(reverted[0].2, "C8 C8 C8 C8 C8 C8 S14 S14 F1 E2 E2");
    assert_eq!(reverted[1].2, "E2");
}

#[test]
fn refusals_return_their_code_and_no_writes() {
    let f = fixtures();
    let v = &f.plain;
    let good = one_function(5, &v.lib, "answer", "new_answer");

    let mut wrong_id = good.clone();
    wrong_id.build_id[0] ^= 0xff;
    let wrong_id = request_file(&v.dir, "wrong-id.req", &f.patch1, &wrong_id, b"");

    let mut unknown = good.clone();
    unknown.target_name = "libnothere.so.3".into();
    let unknown = request_file(&v.dir, "unknown.req", &f.patch1, &unknown, b"");

    let mut missing = good.clone();
    missing.units.push(unit(&v.lib, "bump", "does_not_exist"));
    let missing = request_file(&v.dir, "missing.req", &f.patch1, &missing, b"");

    let no_container = request_file(&v.dir, "nocont.req", &v.dir.join("nope.so"), &good, b"");

    let mut bad_ref = metadata(6, &v.lib, vec![], vec![]);
    bad_ref.refs.push(reference(
        &v.lib,
        "counter",
        &f.patch1,
        "ulpr_counter",
        false,
    ));
    bad_ref.refs[0].patch_offset = 0x7fff_0000;
    let bad_ref = request_file(&v.dir, "badref.req", &f.patch1, &bad_ref, b"");

    // An old function outside the target's code: libpulp's ENOOLDFUNC.
    let mut outside = good.clone();
    outside.units[0].old_faddr = 0x7fff_0000;
    let outside = request_file(&v.dir, "outside.req", &f.patch1, &outside, b"");

    std::fs::write(v.dir.join("garbage.req"), b"\x01\x00").unwrap();
    let good = request_file(&v.dir, "good.req", &f.patch1, &good, b"");

    let script = format!(
        "apply {}\napply {}\napply {}\napply {}\napply {}\napply {}\nraw 1 {}\nraw 99 {}\n\
         reg\ncall answer\ncall bump\nmapped patch1.so\nundo\n\
         apply {}\ncall answer\nundo\nundo\n",
        wrong_id.display(),
        unknown.display(),
        missing.display(),
        no_container.display(),
        bad_ref.display(),
        outside.display(),
        v.dir.join("garbage.req").display(),
        good.display(),
        good.display(),
    );
    let out = run(v, &script, &[]);
    let applied = results(&out, "apply");
    let expect = [
        (code::BUILD_ID_MISMATCH, "libtarget.so' has build-id "),
        (
            code::TARGET_NOT_LOADED,
            "target 'libnothere.so.3' of patch '",
        ),
        (
            code::of_error(errors::ENONEWFUNC),
            "function 'does_not_exist' not found in container '",
        ),
        // dlerror's text: the path, then why.
        (
            code::of_error(errors::EDLOPEN),
            "/nope.so: cannot open shared object file",
        ),
        (
            code::of_error(errors::EINVALIDULP),
            "reference 'ulpr_counter': offset 0x7fff0000 is not a writable variable",
        ),
        (
            code::of_error(errors::ENOOLDFUNC),
            "function 'answer': address 0x",
        ),
    ];
    for ((code, msg, writes), (want_code, want_msg)) in applied.iter().zip(expect) {
        assert_eq!(*code, want_code, "{msg}");
        assert!(msg.contains(want_msg), "{msg:?} lacks {want_msg:?}");
        assert_eq!(writes, "", "{msg}");
    }
    let raw = results(&out, "raw");
    assert_eq!(raw[0].0, code::BAD_REQUEST);
    assert_eq!(raw[0].1, "malformed apply request");
    assert_eq!(
        (raw[1].0, raw[1].1),
        (code::BAD_REQUEST, "unknown operation 99")
    );
    // Nothing stayed: no record, old code, the container not even mapped.
    assert_eq!(with_prefix(&out, "reg ")[0], "reg gen=0 count=0");
    assert_eq!(calls(&out)[..2], ["answer=41", "bump=1"]);
    assert!(out.contains(&"mapped patch1.so=no".to_string()), "{out:#?}");
    let undo = results(&out, "undo");
    assert_eq!(undo[0].0, code::NOTHING_TO_UNDO);
    // A good patch still applies afterwards; UNDO takes its record back
    // (the writes stay made here, as the harness made them).
    assert_eq!(applied[6].0, code::OK);
    assert_eq!(calls(&out)[2], "answer=42");
    assert_eq!(undo[1].0, code::OK);
    assert_eq!(undo[2].0, code::NOTHING_TO_UNDO);
}

/// A function without padding is redirected by rewriting its entry: the
/// trampoline's words (CODE) first, then the entry itself (REWRITE, one
/// write); reverting puts the library's bytes back.
#[test]
fn unpadded_functions_are_rewritten() {
    let f = fixtures();
    let v = &f.unpadded;
    let meta = one_function(7, &v.lib, "answer", "new_answer");
    let req = request_file(&v.dir, "unpadded.req", &f.patch1, &meta, b"");
    let out = run(
        v,
        &format!(
            "call answer\napply {}\nreg\ncall answer\nrevert {}\ncall answer\n",
            req.display(),
            id_hex(7)
        ),
        &[],
    );
    let applied = results(&out, "apply");
    assert_eq!(applied[0].0, code::OK, "{}", applied[0].1);
    let kinds = &applied[0].2;
    assert!(
        kinds.trim_end().ends_with('R') || kinds.contains(" R"),
        "the entry rewrite comes last: {kinds}"
    );
    assert!(
        kinds.contains('C'),
        "the trampoline is written first: {kinds}"
    );
    assert!(
        with_prefix(&out, "reg ")[0].ends_with(" count=1"),
        "{out:?}"
    );
    assert_eq!(calls(&out), ["answer=41", "answer=42", "answer=41"]);
}

#[test]
fn already_applied_not_applied_and_undo() {
    let f = fixtures();
    let v = &f.plain;
    let p1 = patch1_request(v, 1);
    let p2 = patch2_request(v, 2);
    let script = format!(
        "apply {p1}\napply {p1}\nrevert {i9}\nreg\n\
         apply {p2} nw\nmapped patch2.so\nundo\nreg\nmapped patch2.so\nundo\ncall answer\n\
         revert {i1} nw\nreg\nundo\nreg\ncall answer\nrevert {i1}\ncall answer\nreg\n",
        p1 = p1.display(),
        p2 = p2.display(),
        i1 = id_hex(1),
        i9 = id_hex(9)
    );
    let out = run(v, &script, &[]);
    let applied = results(&out, "apply");
    assert_eq!(applied[0].0, code::OK);
    assert_eq!(applied[1].0, code::ALREADY_APPLIED);
    assert!(
        applied[1].1.contains("is already applied"),
        "{}",
        applied[1].1
    );
    assert_eq!(applied[1].2, "");
    assert_eq!(applied[2].0, code::OK);
    let reverted = results(&out, "revert");
    assert_eq!(reverted[0].0, code::NOT_APPLIED);
    assert_eq!(reverted[0].1, format!("patch {} is not applied", id_hex(9)));
    assert_eq!(reverted[1].0, code::OK);
    assert_eq!(reverted[2].0, code::OK);
    let undo = results(&out, "undo");
    assert_eq!(
        undo.iter().map(|u| (u.0, u.2.as_str())).collect::<Vec<_>>(),
        [(code::OK, ""), (code::NOTHING_TO_UNDO, ""), (code::OK, "")]
    );
    let reg: Vec<&str> = with_prefix(&out, "reg ");
    assert_eq!(
        reg,
        [
            "reg gen=2 count=1",
            "reg gen=6 count=1",  // apply p2 then its undo
            "reg gen=8 count=0",  // revert p1 (writes not made)
            "reg gen=10 count=1", // undone
            "reg gen=12 count=0",
        ]
    );
    // The undone apply closed the container it had opened.
    assert_eq!(
        with_prefix(&out, "mapped "),
        ["mapped patch2.so=yes", "mapped patch2.so=no"]
    );
    // Patch 1 stayed in charge through the undone revert.
    assert_eq!(calls(&out), ["answer=42", "answer=42", "answer=41"]);
}

#[test]
fn the_main_program_is_a_target_too() {
    let f = fixtures();
    let v = &f.plain;
    let meta = one_function(8, &v.harness, "prog_value", "new_prog_value");
    let req = request_file(&v.dir, "prog.req", &f.patch_prog, &meta, b"");
    // The program has no TLS block: a TLS reference into it is refused.
    let mut tls = meta.clone();
    tls.patch_id = [9; 32];
    tls.refs.push(ulp_abi::format::Reference {
        target_name: "nothing".into(),
        patch_name: "ulpr_nothing".into(),
        target_offset: 0,
        patch_offset: 0,
        tls: true,
    });
    let tls = request_file(&v.dir, "prog-tls.req", &f.patch_prog, &tls, b"");
    let out = run(
        v,
        &format!(
            "apply {}\nprog\napply {}\nprog\nreg\nrevert {}\nprog\n",
            tls.display(),
            req.display(),
            id_hex(8)
        ),
        &[],
    );
    let applied = results(&out, "apply");
    assert_eq!(applied[0].0, code::of_error(errors::ENOADDRESS));
    assert!(
        applied[0]
            .1
            .starts_with("reference 'ulpr_nothing' -> 'nothing': target '")
            && applied[0].1.ends_with("/harness' has no TLS"),
        "{}",
        applied[0].1
    );
    assert_eq!(applied[1].0, code::OK);
    assert_eq!(
        calls(&out),
        ["prog_value=5", "prog_value=6", "prog_value=5"]
    );
    let rec = with_prefix(&out, "rec ");
    assert!(
        rec[0].contains(&format!("target={} ", v.harness.display())),
        "{}",
        rec[0]
    );
}

#[test]
fn the_ring_has_the_loaded_line_and_timestamped_events() {
    let f = fixtures();
    let v = &f.plain;
    let req = patch2_request(v, 2);
    let out = run(
        v,
        &format!("apply {}\nrevert {}\nring\n", req.display(), id_hex(3)),
        &[],
    );
    let ring: Vec<&str> = with_prefix(&out, "ring: ")
        .iter()
        .map(|l| &l["ring: ".len()..])
        .collect();
    assert_eq!(
        ring[0],
        format!(
            "libpulp loaded... (ulp 0.1.0, protocol {})",
            ulp_abi::PROTOCOL_VERSION
        )
    );
    assert_eq!(ring.len(), 4, "{ring:#?}");
    for line in &ring[1..] {
        let b = line.as_bytes();
        // [YYYY-MM-DD HH:MM:SS] ulp: ...
        let shape = b.len() > 27
            && b[0] == b'['
            && b[5] == b'-'
            && b[8] == b'-'
            && b[11] == b' '
            && b[14] == b':'
            && b[17] == b':'
            && &line[20..27] == "] ulp: "
            && [1, 2, 3, 4, 6, 7, 9, 10, 12, 13, 15, 16, 18, 19]
                .iter()
                .all(|&i| b[i].is_ascii_digit());
        assert!(shape, "{line}");
    }
    // libpulp's line for every patch it is asked to load, then ours.
    assert_eq!(
        &ring[1][27..],
        format!("Patch path: {}", f.patch2.display())
    );
    assert!(ring[2][27..].starts_with("applied patch '"), "{}", ring[2]);
    assert_eq!(
        &ring[3][27..],
        format!("revert failed: patch {} is not applied", id_hex(3))
    );
}

#[test]
fn opt_outs_disable_apply() {
    let f = fixtures();
    let v = &f.plain;
    let req = patch2_request(v, 2);
    let script = format!("state\napply {}\ncall answer\nring\n", req.display());
    let user = String::from_utf8(
        std::process::Command::new("id")
            .arg("-un")
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    let user = user.trim();
    let users = format!("nobody-else,{user}");
    let user_line = format!("Matched user pattern {user}");
    let cases: [(&str, &str, &str); 4] = [
        ("LIBPULP_DISABLE_ON_PATH", "*", "Matched path pattern *"),
        (
            "LIBPULP_DISABLE_ON_PATH",
            "/nowhere/*:*/harness",
            "Matched path pattern */harness",
        ),
        ("LIBPULP_DISABLE_ON_USERS", &users, &user_line),
        ("LIBPULP_DISABLE_ON_GROUPS", "*", "Matched group pattern *"),
    ];
    for (var, val, logged) in cases {
        let out = run(v, &script, &[(var, val)]);
        assert_eq!(with_prefix(&out, "state="), ["state=1"], "{var}={val}");
        let applied = results(&out, "apply");
        assert_eq!(applied[0].0, code::DISABLED, "{var}={val}");
        assert!(
            applied[0].1.contains("disabled by user"),
            "{}",
            applied[0].1
        );
        assert_eq!(applied[0].2, "");
        assert_eq!(calls(&out), ["answer=41"]);
        let ring = with_prefix(&out, "ring: ");
        assert!(
            ring.iter().any(|l| l.ends_with(&format!(
                "] ulp: {logged}: livepatching disabled by user request."
            ))),
            "{var}={val}: {ring:#?}"
        );
    }
    // Patterns that match nothing leave it enabled.
    let out = run(
        v,
        &script,
        &[
            ("LIBPULP_DISABLE_ON_PATH", "/nowhere/*"),
            ("LIBPULP_DISABLE_ON_USERS", "no-such-user"),
            ("LIBPULP_DISABLE_ON_GROUPS", "no-such-group,"),
        ],
    );
    assert_eq!(with_prefix(&out, "state="), ["state=0"]);
    assert_eq!(results(&out, "apply")[0].0, code::OK);
    assert_eq!(calls(&out), ["answer=43"]);
}

/// libpulp's own example: a container packed by libpulp's packer (its
/// `.ulp` and `.ulp.comments` bytes as the tool would send them) applied to
/// the libpulp-posted `libgreet.so.0` gives the session of the README.
#[test]
fn a_libpulp_packed_container_applies_and_reverts() {
    let v = interop();
    let ulp = std::fs::read(interop_dir().join("ulp.bin")).unwrap();
    let comments = std::fs::read(interop_dir().join("ulp.comments.bin")).unwrap();
    let meta = ulp_abi::format::Metadata::decode(&ulp).unwrap();
    let container = v.dir.join("greet_livepatch1.so");
    let req = request_file(&v.dir, "greet.req", &container, &meta, &comments);
    let script = format!(
        "greet bob\ncall greet_answer\ncall greet_calls\ncall greet_thread_calls\n\
         apply {}\n\
         greet bob\ncall greet_answer\ncall greet_calls\ncall greet_thread_calls\n\
         reg\nrevert {}\n\
         greet bob\ncall greet_answer\ncall greet_calls\ncall greet_thread_calls\n",
        req.display(),
        hex(&meta.patch_id)
    );
    let out = run(v, &script, &[]);
    let seen: Vec<&str> = out
        .iter()
        .filter(|l| l.starts_with("greet") && l.contains('='))
        .map(String::as_str)
        .collect();
    assert_eq!(
        seen,
        [
            "greet=hello, bob",
            "greet_answer=41",
            "greet_calls=1",
            "greet_thread_calls=1",
            "greet=howdy, bob!",
            "greet_answer=42",
            "greet_calls=11",
            "greet_thread_calls=11",
            "greet=hello, bob",
            "greet_answer=41",
            "greet_calls=12",
            "greet_thread_calls=12",
        ],
        "{out:#?}"
    );
    let applied = results(&out, "apply");
    assert_eq!(
        applied[0].2,
        "C8 C8 C8 C8 C8 C8 C8 C8 C8 S14 E2 S14 E2 S14 E2 F1 S14 S14 S14"
    );
    let rec = with_prefix(&out, "rec ");
    assert!(
        rec[0].ends_with("comments= Fixes CVE-2099-0001 and bsc#1234567.|"),
        "{}",
        rec[0]
    );
}

/// A panic inside the runtime (the debug build's test operation) never
/// aborts the process and never unwinds into its code: the call answers
/// FAILED, the ring says what happened, live patching is off from then on
/// (an APPLY is refused as disabled), and the process goes on running its
/// code.
#[test]
fn a_panic_in_the_runtime_is_a_refusal_and_the_process_runs_on() {
    let f = fixtures();
    let v = &f.plain;
    std::fs::write(v.dir.join("empty.req"), b"").unwrap();
    let good = patch1_request(v, 7);
    let script = format!(
        "raw {} {}\nstate\nring\ncall answer\napply {}\ncall answer\n",
        ulp_abi::op::TEST_PANIC,
        v.dir.join("empty.req").display(),
        good.display(),
    );
    let out = run(v, &script, &[]);
    let raw = results(&out, "raw");
    assert_eq!(raw[0].0, code::FAILED, "{out:#?}");
    assert!(raw[0].1.contains("internal error"), "{out:#?}");
    assert!(
        out.iter()
            .any(|l| l.starts_with("ring: ")
                && l.contains("internal error: the test operation's panic")),
        "{out:#?}"
    );
    assert!(
        out.contains(&format!("state={}", ulp_abi::state::DISABLED_BY_ERROR)),
        "{out:#?}"
    );
    let applied = results(&out, "apply");
    assert_eq!(applied[0].0, code::DISABLED, "{out:#?}");
    assert_eq!(calls(&out), ["answer=41", "answer=41"]);
}

//! REVERT_ALL and REPLACE driven in-process by the C harness (`raw OP
//! FILE` calls the entry point and makes none of the writes, as when the
//! tool cannot make them): the registry changes as one step, UNDO takes the
//! whole step back, and a replacement that is refused changes nothing.

mod support;

use std::path::{Path, PathBuf};

use support::*;
use ulp_abi::{code, op, ApplyRequest, ReplaceRequest};

/// A REPLACE request file: `lib`'s patches by the APPLY request in `apply`.
fn replace_file(v: &Variant, name: &str, lib: &str, apply: &Path) -> PathBuf {
    let bytes = std::fs::read(apply).unwrap();
    let r = ReplaceRequest {
        library: lib.as_bytes(),
        apply: ApplyRequest::decode(&bytes).unwrap(),
    };
    let mut buf = vec![0u8; r.encoded_len()];
    r.encode(&mut buf).unwrap();
    let path = v.dir.join(name);
    std::fs::write(&path, buf).unwrap();
    path
}

fn text_file(v: &Variant, name: &str, text: &str) -> PathBuf {
    let path = v.dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn ids(lines: &[String]) -> Vec<String> {
    // Registry dumps, each as the ids of its records in order.
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for l in lines {
        if l.starts_with("reg ") {
            if let Some(c) = cur.take() {
                out.push(c);
            }
            cur = Some(String::new());
        } else if let (Some(c), Some(rest)) = (cur.as_mut(), l.strip_prefix("rec id=")) {
            if !c.is_empty() {
                c.push(',');
            }
            c.push_str(&rest[..2]);
        } else if let Some(c) = cur.take() {
            out.push(c);
        }
    }
    out.extend(cur);
    out
}

#[test]
fn replace_and_revert_all_are_one_step_that_undo_takes_back() {
    let f = fixtures();
    let v = &f.plain;
    let lib = v.lib.file_name().unwrap().to_str().unwrap();
    let p1 = patch1_request(v, 1);
    let p2 = patch2_request(v, 2);
    let rep3 = replace_file(v, "rep3.req", lib, &patch2_request(v, 3));
    let rep2 = replace_file(v, "rep2.req", lib, &p2);
    // For another build of the library: refused, nothing changes.
    let bad = replace_file(v, "repbad.req", lib, &patch2_request(&f.cet, 4));
    let all = text_file(v, "lib.req", lib);
    let nothing = text_file(v, "nothing.req", "libnothing.so");
    let by_path = text_file(v, "path.req", v.lib.to_str().unwrap());
    let (replace, revert_all) = (op::REPLACE, op::REVERT_ALL);
    let script = format!(
        "apply {p1}\napply {p2}\ncall answer\nreg\n\
         raw {replace} {rep3}\nreg\nundo\nreg\ncall answer\n\
         raw {revert_all} {all}\nreg\nundo\nreg\n\
         raw {replace} {bad}\nreg\n\
         raw {replace} {rep2}\nreg\nundo\nreg\n\
         raw {revert_all} {nothing}\n\
         raw {revert_all} {by_path}\nreg\nundo\nreg\n\
         call answer\n",
        p1 = p1.display(),
        p2 = p2.display(),
        rep3 = rep3.display(),
        all = all.display(),
        bad = bad.display(),
        rep2 = rep2.display(),
        nothing = nothing.display(),
        by_path = by_path.display(),
    );
    let out = run(v, &script, &[]);
    let raw = results(&out, "raw");
    let lib_path = v.lib.to_str().unwrap();

    // REPLACE of {1, 2} by 3 (the same container as 2, so the stub of
    // `answer` already points at the right code): `bump` and `secret`
    // get their NOPs back.
    assert_eq!(raw[0].0, code::OK, "{:?}", raw[0]);
    assert!(
        raw[0]
            .1
            .starts_with(&format!("replaced the patches from '{lib}' by '"))
            && raw[0].1.ends_with("': 2 removed (patch1.so, patch2.so)"),
        "{}",
        raw[0].1
    );
    // Both switch at once: a slot each (three words), each stub pointed at
    // its slot, the flag, the entries back to the NOP.
    assert_eq!(raw[0].2, "C8 C8 C8 C8 C8 C8 S14 S14 F1 E2 E2");
    // REVERT_ALL: the same for three functions.
    assert_eq!(raw[1].0, code::OK);
    assert_eq!(
        raw[1].1,
        format!("reverted all patches from '{lib}': 2 removed (patch1.so, patch2.so)")
    );
    assert_eq!(
        raw[1].2,
        "C8 C8 C8 C8 C8 C8 C8 C8 C8 S14 S14 S14 F1 E2 E2 E2"
    );
    // Refused: another build-id.
    assert_eq!(raw[2].0, code::BUILD_ID_MISMATCH, "{:?}", raw[2]);
    assert_eq!(raw[2].2, "");
    // The new patch is applied already: only the others go.
    assert_eq!(raw[3].0, code::OK);
    assert!(raw[3].1.contains("kept '"), "{}", raw[3].1);
    assert!(
        raw[3].1.ends_with(": 1 removed (patch1.so)"),
        "{}",
        raw[3].1
    );
    // Nothing of that library.
    assert_eq!(raw[4].0, code::NOT_APPLIED);
    assert_eq!(raw[4].1, "no patch of 'libnothing.so' is applied");
    // By the loaded path.
    assert_eq!(raw[5].0, code::OK);
    assert!(
        raw[5]
            .1
            .starts_with(&format!("reverted all patches from '{lib_path}'")),
        "{}",
        raw[5].1
    );

    let undo = with_prefix(&out, "undo rc=");
    assert_eq!(undo.len(), 4);
    assert!(undo.iter().all(|u| u.starts_with("undo rc=0 ")), "{undo:?}");
    assert!(
        undo[0].contains("msg=undid apply of patch '")
            && undo[0].contains("and revert of 2 patches"),
        "{}",
        undo[0]
    );

    assert_eq!(
        ids(&out),
        [
            "01,02", // both applied
            "03",    // replaced
            "01,02", // undone, in the old order
            "",      // reverted all
            "01,02", // undone
            "01,02", // refused replacement: unchanged
            "02",    // 1 removed, 2 kept
            "01,02", // undone
            "",      // reverted all, by path
            "01,02", // undone
        ]
    );
    // No write was made after the two applies: patch 2 runs throughout.
    let answers = with_prefix(&out, "answer=");
    assert_eq!(answers, ["answer=43", "answer=43", "answer=43"]);
    assert_eq!(out.last().map(String::as_str), Some("done"));
}

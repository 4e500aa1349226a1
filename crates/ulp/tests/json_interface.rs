//! The JSON the Ansible modules read is an interface: every field they
//! consume must stay, with its JSON type. The modules are
//! ansible/collections/ansible_collections/ulp/livepatch/plugins/modules/
//! patch.py and info.py, with their shared
//! plugins/module_utils/ulp_json.py (which lists the same fields). A field
//! added there must be added to `FIELDS` here.

mod common;

use common::*;
use serde_json::Value;

/// The JSON types a field may have.
#[derive(Clone, Copy, Debug)]
enum Ty {
    Int,
    Str,
    Bool,
    Array,
    StrOrNull,
}

fn has_type(v: &Value, ty: Ty) -> bool {
    match ty {
        Ty::Int => v.is_i64() || v.is_u64(),
        Ty::Str => v.is_string(),
        Ty::Bool => v.is_boolean(),
        Ty::Array => v.is_array(),
        Ty::StrOrNull => v.is_string() || v.is_null(),
    }
}

/// Every field the modules read, by command: a path (`[]` steps into
/// every element of an array) and its type. Keep in step with
/// plugins/module_utils/ulp_json.py and the modules.
const FIELDS: &[(&str, &str, Ty)] = &[
    // patch.py: results of the runs it makes.
    ("trigger", "processes", Ty::Array),
    ("trigger", "processes[].pid", Ty::Int),
    ("trigger", "processes[].name", Ty::Str),
    ("trigger", "processes[].results", Ty::Array),
    ("trigger", "processes[].results[].patch", Ty::StrOrNull),
    ("trigger", "processes[].results[].status", Ty::Str),
    ("trigger", "processes[].results[].reason", Ty::StrOrNull),
    ("trigger", "errors", Ty::Array),
    // patch.py: applied or not, before any run.
    ("check", "applied", Ty::Bool),
    ("check", "runtime", Ty::Bool),
    // patch.py (a process without the runtime) - check's error document.
    ("check-no-runtime", "runtime", Ty::Bool),
    ("check-no-runtime", "error", Ty::Str),
    // patch.py (targets, revert_all) and info.py (the facts).
    ("patches", "processes", Ty::Array),
    ("patches", "processes[].pid", Ty::Int),
    ("patches", "processes[].name", Ty::Str),
    ("patches", "processes[].libraries", Ty::Array),
    ("patches", "processes[].libraries[].path", Ty::Str),
    ("patches", "processes[].libraries[].build_id", Ty::StrOrNull),
    ("patches", "processes[].libraries[].patches", Ty::Array),
    (
        "patches",
        "processes[].libraries[].patches[].container",
        Ty::Str,
    ),
    ("patches", "unpatched", Ty::Array),
    ("patches", "unreadable_processes", Ty::Int),
    ("patches", "warnings", Ty::Array),
    ("patches", "errors", Ty::Array),
    // patch.py: the target a container is for.
    ("dump", "name", Ty::Str),
    ("dump", "build_id", Ty::Str),
];

/// The values at `path` in `doc` (several when it steps into arrays);
/// fails when a step is missing or when an array it steps into is empty
/// (the test must exercise every field).
fn values<'a>(doc: &'a Value, path: &str, what: &str) -> Vec<&'a Value> {
    let mut now = vec![doc];
    for step in path.split('.') {
        let (key, each) = match step.strip_suffix("[]") {
            Some(k) => (k, true),
            None => (step, false),
        };
        let mut next = Vec::new();
        for v in now {
            let field = v.get(key).unwrap_or_else(|| {
                panic!("{what}: no field '{path}' ('{key}' missing) in {doc:#}")
            });
            if each {
                let items = field
                    .as_array()
                    .unwrap_or_else(|| panic!("{what}: '{key}' of '{path}' is not an array"));
                assert!(
                    !items.is_empty(),
                    "{what}: '{key}' of '{path}' is empty: {doc:#}"
                );
                next.extend(items.iter());
            } else {
                next.push(field);
            }
        }
        now = next;
    }
    now
}

fn parse(what: &str, out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {out}"))
}

#[test]
fn every_field_the_ansible_modules_read_is_there() {
    let demo = Demo::new("json-iface");
    let mut t = demo.start(&[]);
    let plain = demo.start_plain(&[]);
    let pid = t.pid.to_string();

    let mut docs: Vec<(&str, Value)> = Vec::new();
    let (code, out, err) = demo.ulp(&["check", "--json", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 0, "{out}{err}");
    docs.push(("check", parse("check", &out)));
    let out = demo.ulp_ok(&["trigger", "--json", "-p", &pid, "demo_livepatch.so"]);
    docs.push(("trigger", parse("trigger", &out)));
    assert_eq!(t.ask("answer"), "2");
    let (code, out, err) = demo.ulp(&["check", "--json", "-p", &pid, "demo_livepatch.so"]);
    assert_eq!(code, 1, "{out}{err}");
    docs.push(("check", parse("check", &out)));
    let (code, out, err) = demo.ulp(&[
        "check",
        "--json",
        "-p",
        &plain.pid.to_string(),
        "demo_livepatch.so",
    ]);
    assert_eq!(code, 255, "{out}{err}");
    docs.push(("check-no-runtime", parse("check", &out)));
    // A failed result (its reason a string) and an error about the pid.
    let (_, out, _) = demo.ulp(&[
        "trigger",
        "--json",
        "-p",
        &pid,
        "--revert",
        "demo_livepatch2.so",
    ]);
    let failed = parse("trigger --revert", &out);
    assert!(
        values(&failed, "processes[].results[].reason", "trigger")[0].is_string(),
        "{failed:#}"
    );
    docs.push(("trigger", failed));
    let (_, out, _) = demo.ulp(&["trigger", "--json", "-p", "999999999", "demo_livepatch.so"]);
    let gone = parse("trigger -p gone", &out);
    assert!(
        values(&gone, "errors", "trigger")[0].as_array().unwrap()[0]["error"].is_string(),
        "{gone:#}"
    );
    // With -p: without it, other tests' processes come and go meanwhile.
    let out = demo.ulp_ok(&["patches", "--json", "-p", &pid]);
    docs.push(("patches", parse("patches", &out)));
    let out = demo.ulp_ok(&["dump", "--json", "demo_livepatch.so"]);
    docs.push(("dump", parse("dump", &out)));

    for (command, path, ty) in FIELDS {
        let mut seen = false;
        for (c, doc) in docs.iter().filter(|(c, _)| c == command) {
            for v in values(doc, path, c) {
                assert!(
                    has_type(v, *ty),
                    "{c}: '{path}' is {v}, not {ty:?}: {doc:#}"
                );
            }
            seen = true;
        }
        assert!(seen, "no document of {command} for {path}");
    }
}

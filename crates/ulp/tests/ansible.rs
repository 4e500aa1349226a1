//! The Ansible collection `ulp.livepatch` (ansible/collections/...) driven
//! by a real ansible-core against localhost, on real targets: apply, its
//! idempotence, check mode, revert, revert_all and replace, `pid` as an int
//! and a list, a glob that matches nothing, a failing container, and the
//! `info` facts; and the example rollout playbook (canary, health check,
//! revert on a failed check) run as a user would run it.
//!
//! ansible-core lives in a virtual environment under the cargo target
//! directory (`target/ansible-venv`), created on the first run and reused
//! while it has the right version. When it cannot be created (no `python3
//! -m venv`, pip fails) the test says `skipped: ansible-core could not be
//! installed: REASON` and passes; nothing else skips it.
//!
//! Ansible runs inside a PID namespace of its own, so that "every process
//! that runs the target" means this test's targets, not other tests'.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ANSIBLE_CORE: &str = "ansible-core==2.19.*";
const ANSIBLE_VERSION_PREFIX: &str = "2.19.";
/// One ansible-playbook run (the machine may be loaded).
const PLAYBOOK_LIMIT: Duration = Duration::from_secs(600);

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn venv_dir() -> PathBuf {
    ulp_fixtures::profile_dir()
        .parent()
        .expect("the target directory")
        .join("ansible-venv")
}

/// The version of ansible-core in the venv, if it is usable.
fn venv_version(venv: &Path) -> Option<String> {
    if !venv.join("bin/ansible-playbook").exists() {
        return None;
    }
    let out = Command::new(venv.join("bin/python"))
        .args([
            "-c",
            "import ansible.release; print(ansible.release.__version__)",
        ])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The venv with ansible-core (made once for both tests of this file).
fn ensure_venv() -> Result<PathBuf, String> {
    static VENV: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    VENV.get_or_init(make_venv).clone()
}

/// The venv with ansible-core, made when missing; Err(reason) when it
/// cannot be.
fn make_venv() -> Result<PathBuf, String> {
    let venv = venv_dir();
    if venv_version(&venv).is_some_and(|v| v.starts_with(ANSIBLE_VERSION_PREFIX)) {
        return Ok(venv);
    }
    let _ = std::fs::remove_dir_all(&venv);
    let step = |cmd: Command, what: &str, limit: u64| -> Result<(), String> {
        let (code, out, err) = run_bounded(cmd, what, Duration::from_secs(limit));
        if code == 0 {
            Ok(())
        } else {
            let text = format!("{out}{err}");
            let last = text.lines().rev().find(|l| !l.trim().is_empty());
            Err(format!("{what} exited {code}: {}", last.unwrap_or("")))
        }
    };
    let mut mk = Command::new("python3");
    mk.args(["-m", "venv"]).arg(&venv);
    step(mk, "python3 -m venv", 120)?;
    let mut pip = Command::new(venv.join("bin/pip"));
    pip.args(["install", "-q", "--disable-pip-version-check", ANSIBLE_CORE]);
    step(pip, "pip install ansible-core", 900).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&venv);
    })?;
    match venv_version(&venv) {
        Some(v) if v.starts_with(ANSIBLE_VERSION_PREFIX) => Ok(venv),
        other => Err(format!("the venv has ansible-core {other:?}")),
    }
}

struct Ansible<'a> {
    venv: PathBuf,
    ns: &'a PidNs,
    work: &'a Path,
    home: TempDir,
}

impl Ansible<'_> {
    /// Runs PLAYBOOK (its tasks register their results; the last task
    /// writes them to `out.json`) in the namespace; returns that document.
    fn play(&self, name: &str, vars: &str, tasks: &str) -> Value {
        let out = self.work.join(format!("{name}.json"));
        let _ = std::fs::remove_file(&out);
        let book = self.work.join(format!("{name}.yml"));
        std::fs::write(
            &book,
            format!(
                "- hosts: all\n  gather_facts: false\n  vars:\n    ulp: {ulp}\n{vars}  tasks:\n{tasks}\n    - ansible.builtin.copy:\n        dest: {out}\n        content: \"{{{{ {{'a': a | default(None), 'b': b | default(None), 'c': c | default(None), 'd': d | default(None), 'e': e | default(None)}} | to_json }}}}\"\n",
                ulp = ulp_bin(),
                out = out.display(),
            ),
        )
        .unwrap();
        let book = book.to_string_lossy().into_owned();
        let start = Instant::now();
        let (code, stdout, stderr) =
            self.playbook(name, &["-i", "localhost,", "-c", "local", &book]);
        eprintln!("ansible: playbook {name}: {:.1?}", start.elapsed());
        assert_eq!(code, 0, "playbook {name}:\n{stdout}\n{stderr}");
        let text =
            std::fs::read_to_string(&out).unwrap_or_else(|e| panic!("{name}: {e}\n{stdout}"));
        serde_json::from_str(&text).unwrap()
    }

    /// `ansible-playbook ARGS` in the namespace, with Ansible's files kept
    /// in this test's home: (exit code, stdout, stderr).
    fn playbook(&self, name: &str, args: &[&str]) -> (i32, String, String) {
        let playbook = self.venv.join("bin/ansible-playbook");
        let mut cmd = self
            .ns
            .command(self.work, &playbook.to_string_lossy(), args);
        let h = self.home.path();
        let collections = repo_root().join("ansible/collections");
        cmd.env("ANSIBLE_COLLECTIONS_PATH", &collections)
            .env("ANSIBLE_COLLECTIONS_SCAN_SYS_PATH", "False")
            .env("ANSIBLE_HOME", h.join("home"))
            .env("ANSIBLE_LOCAL_TEMP", h.join("local"))
            .env("ANSIBLE_REMOTE_TEMP", h.join("remote"))
            .env("ANSIBLE_HOST_KEY_CHECKING", "False")
            .env("ANSIBLE_RETRY_FILES_ENABLED", "False")
            .env("ANSIBLE_NOCOLOR", "1")
            .env("ANSIBLE_PYTHON_INTERPRETER", self.venv.join("bin/python"))
            .env("ANSIBLE_LOCALHOST_WARNING", "False")
            .env("PYTHONWARNINGS", "ignore")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("HOME", h);
        run_bounded(cmd, &format!("ansible-playbook {name}"), PLAYBOOK_LIMIT)
    }
}

/// The statuses of the results of a patch task, `(pid, status)` in order.
fn statuses(task: &Value) -> Vec<(i64, String)> {
    task["results"]
        .as_array()
        .unwrap_or_else(|| panic!("no results: {task}"))
        .iter()
        .map(|r| {
            (
                r["pid"].as_i64().unwrap(),
                r["status"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn the_ansible_collection_applies_reverts_and_reports() {
    let started = Instant::now();
    let venv = match ensure_venv() {
        Ok(v) => v,
        Err(reason) => return skipped(&reason),
    };
    eprintln!("ansible: venv ready in {:.1?}", started.elapsed());

    let demo = Demo::new("ansible");
    copy_files(
        &fixtures_dir(),
        demo.dir.path(),
        &["demo_livepatch_undef.so"],
    );
    std::fs::write(
        demo.dir.join("undef.dsc"),
        "demo_livepatch_undef.so\n@libulpdemo.so.1\ndemo_answer:new_demo_answer\n",
    )
    .unwrap();
    demo.ulp_ok(&["packer", "undef.dsc"]);
    let fix = demo.path("demo_livepatch.so");
    let fix2 = demo.path("demo_livepatch2.so");
    let undef = demo.path("demo_livepatch_undef.so");

    let ns = PidNs::new();
    let program = demo.dir.join("demo_prog");
    let (mut t1, p1) = ns.start(demo.dir.path(), &program, &demo.runtime);
    let (mut t2, p2) = ns.start(demo.dir.path(), &program, &demo.runtime);
    let (n1, n2): (i64, i64) = (p1.parse().unwrap(), p2.parse().unwrap());
    let ansible = Ansible {
        venv,
        ns: &ns,
        work: demo.dir.path(),
        home: TempDir::new("ansible-home"),
    };
    let with = |s: &str| -> Vec<(i64, String)> { vec![(n1, s.to_string()), (n2, s.to_string())] };

    // Check mode: what would change, nothing changed.
    let doc = ansible.play(
        "check",
        "",
        &format!(
            "    - ulp.livepatch.patch: {{container: {fix}, ulp: \"{{{{ ulp }}}}\"}}\n      check_mode: true\n      register: a\n"
        ),
    );
    assert_eq!(doc["a"]["changed"], true, "{doc}");
    assert_eq!(statuses(&doc["a"]), with("would apply"), "{doc}");
    assert_eq!(doc["a"]["summary"]["patched"], 2, "{doc}");
    assert_eq!(t1.ask("answer"), "1", "check mode changed nothing");
    assert_eq!(t2.ask("answer"), "1");

    // Apply to one pid (an int), again (no change), then a list of pids
    // (one changes), and the info facts.
    let doc = ansible.play(
        "apply",
        "",
        &format!(
            "    - ulp.livepatch.patch: {{container: {fix}, pid: {n1}, ulp: \"{{{{ ulp }}}}\"}}\n      register: a\n\
             \x20   - ulp.livepatch.patch: {{container: {fix}, pid: {n1}, ulp: \"{{{{ ulp }}}}\"}}\n      register: b\n\
             \x20   - ulp.livepatch.patch: {{container: {fix}, pid: [{n1}, {n2}], ulp: \"{{{{ ulp }}}}\"}}\n      register: c\n\
             \x20   - ulp.livepatch.info: {{ulp: \"{{{{ ulp }}}}\"}}\n\
             \x20   - ansible.builtin.set_fact: {{d: \"{{{{ ansible_facts.ulp_patches }}}}\"}}\n"
        ),
    );
    assert_eq!(doc["a"]["changed"], true, "{doc}");
    assert_eq!(statuses(&doc["a"]), vec![(n1, "SUCCESS".into())], "{doc}");
    assert_eq!(doc["a"]["summary"]["patched"], 1, "{doc}");
    assert_eq!(doc["b"]["changed"], false, "idempotent: {doc}");
    assert_eq!(doc["b"]["failed"], false, "{doc}");
    assert_eq!(statuses(&doc["b"]), vec![(n1, "SKIPPED".into())], "{doc}");
    assert_eq!(doc["b"]["results"][0]["reason"], "Patch already applied");
    assert_eq!(doc["c"]["changed"], true, "{doc}");
    assert_eq!(
        statuses(&doc["c"]),
        vec![(n1, "SKIPPED".into()), (n2, "SUCCESS".into())],
        "{doc}"
    );
    let patched = doc["d"]["patched"].as_array().unwrap();
    for pid in [n1, n2] {
        assert!(
            patched
                .iter()
                .any(|p| p["pid"] == pid && p["containers"][0] == "demo_livepatch.so"),
            "info lists the patch in {pid}: {doc}"
        );
    }
    let procs = doc["d"]["processes"].as_array().unwrap();
    assert!(
        procs.iter().any(|p| p["pid"] == n1
            && p["libraries"][0]["patches"][0]["container"] == "demo_livepatch.so"),
        "{doc}"
    );
    assert_eq!(t1.ask("answer"), "2", "applied");
    assert_eq!(t1.ask("word"), "new");
    assert_eq!(t2.ask("answer"), "2");

    // Revert everywhere (no pid: every process running the target), again.
    let doc = ansible.play(
        "revert",
        "",
        &format!(
            "    - ulp.livepatch.patch: {{container: {fix}, state: reverted, ulp: \"{{{{ ulp }}}}\"}}\n      check_mode: true\n      register: a\n\
             \x20   - ulp.livepatch.patch: {{container: {fix}, state: reverted, ulp: \"{{{{ ulp }}}}\"}}\n      register: b\n\
             \x20   - ulp.livepatch.patch: {{container: {fix}, state: reverted, ulp: \"{{{{ ulp }}}}\"}}\n      register: c\n"
        ),
    );
    assert_eq!(statuses(&doc["a"]), with("would revert"), "{doc}");
    assert_eq!(doc["b"]["changed"], true, "{doc}");
    assert_eq!(statuses(&doc["b"]), with("SUCCESS"), "{doc}");
    assert_eq!(doc["c"]["changed"], false, "idempotent: {doc}");
    assert_eq!(doc["c"]["failed"], false, "{doc}");
    assert_eq!(statuses(&doc["c"]), with("SKIPPED"), "{doc}");
    assert_eq!(t1.ask("answer"), "1", "reverted");
    assert_eq!(t2.ask("answer"), "1");

    // revert_all (and again), replace, a glob that matches
    // nothing, a container that fails to load.
    let doc = ansible.play(
        "more",
        "",
        &format!(
            "    - ulp.livepatch.patch: {{container: {fix}, ulp: \"{{{{ ulp }}}}\"}}\n\
             \x20   - ulp.livepatch.patch: {{revert_all: libulpdemo.so.1, state: reverted, ulp: \"{{{{ ulp }}}}\"}}\n      register: a\n\
             \x20   - ulp.livepatch.patch: {{revert_all: libulpdemo.so.1, state: reverted, ulp: \"{{{{ ulp }}}}\"}}\n      register: b\n\
             \x20   - ulp.livepatch.patch: {{container: {fix}, ulp: \"{{{{ ulp }}}}\", pid: {n1}}}\n\
             \x20   - ulp.livepatch.patch: {{revert_all: libulpdemo.so.1, container: {fix2}, state: reverted, ulp: \"{{{{ ulp }}}}\", pid: {n1}}}\n      register: c\n\
             \x20   - ulp.livepatch.patch: {{container: \"{dir}/nothing*.so\", ulp: \"{{{{ ulp }}}}\"}}\n      register: d\n      ignore_errors: true\n\
             \x20   - ulp.livepatch.patch: {{container: {undef}, ulp: \"{{{{ ulp }}}}\", pid: {n2}}}\n      register: e\n      ignore_errors: true\n",
            dir = demo.dir.path().display(),
        ),
    );
    assert_eq!(doc["a"]["changed"], true, "{doc}");
    assert_eq!(statuses(&doc["a"]), with("SUCCESS"), "{doc}");
    assert_eq!(doc["b"]["changed"], false, "{doc}");
    assert_eq!(doc["b"]["failed"], false, "{doc}");
    assert_eq!(doc["b"]["summary"]["patched"], 0, "{doc}");
    assert_eq!(doc["c"]["changed"], true, "{doc}");
    assert_eq!(statuses(&doc["c"]), vec![(n1, "SUCCESS".into())], "{doc}");
    assert_eq!(doc["d"]["failed"], true, "{doc}");
    assert!(
        doc["d"]["msg"]
            .as_str()
            .unwrap()
            .contains("matches no file"),
        "{doc}"
    );
    assert_eq!(doc["e"]["failed"], true, "{doc}");
    assert_eq!(statuses(&doc["e"]), vec![(n2, "ERROR".into())], "{doc}");
    let msg = doc["e"]["msg"].as_str().unwrap();
    assert!(msg.contains("Failure in dlopen"), "{doc}");
    assert!(msg.contains("ulp_fixture_nowhere_defined"), "{doc}");
    assert_eq!(doc["e"]["summary"]["failed"], 1, "{doc}");
    assert_eq!(t1.ask("answer"), "3", "replaced by demo_livepatch2.so");
    assert_eq!(t1.ask("word"), "old");
    assert_eq!(
        t2.ask("answer"),
        "1",
        "the failed container changed nothing"
    );

    eprintln!("ansible: the whole test took {:.1?}", started.elapsed());
}

#[test]
fn the_rollout_playbook_applies_and_reverts_on_a_failed_check() {
    let venv = match ensure_venv() {
        Ok(v) => v,
        Err(reason) => return skipped(&reason),
    };
    let demo = Demo::new("rollout");
    let ns = PidNs::new();
    let program = demo.dir.join("demo_prog");
    let (mut t, pid) = ns.start(demo.dir.path(), &program, &demo.runtime);
    let ansible = Ansible {
        venv,
        ns: &ns,
        work: demo.dir.path(),
        home: TempDir::new("rollout-home"),
    };
    let inventory = demo.dir.join("inventory.ini");
    std::fs::write(
        &inventory,
        "[livepatch]\nlocalhost ansible_connection=local\n",
    )
    .unwrap();
    let rollout = repo_root()
        .join("ansible/collections/ansible_collections/ulp/livepatch/playbooks/rollout.yml");
    // Installed into a directory that does not exist yet on the host.
    let dest = demo.dir.join("installed/demo_livepatch.so");
    let vars = |check: &str| {
        format!(
            "{{\"container_src\": \"{}\", \"container_dest\": \"{}\", \"health_check\": \"{check}\", \"ulp_bin\": \"{}\", \"ansible_become\": false}}",
            demo.path("demo_livepatch.so"),
            dest.display(),
            ulp_bin(),
        )
    };
    let run = |check: &str| {
        let v = vars(check);
        let args = [
            "-i",
            &*inventory.to_string_lossy(),
            &*rollout.to_string_lossy(),
            "-e",
            &v,
        ]
        .map(str::to_string);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        ansible.playbook("rollout", &args)
    };

    // A healthy canary: applied there, then (a no-op) in the batches.
    let (code, out, err) = run("true");
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(dest.is_file(), "the container was not installed");
    assert_eq!(t.ask("answer"), "2", "applied by the rollout");

    // Reverted by hand, then a canary whose check fails: the rollout
    // applies, sees the failure, reverts there and stops.
    let dest_arg = dest.to_string_lossy();
    let (code, out, err) = ns.ulp(
        demo.dir.path(),
        &["trigger", "-p", &pid, "--revert", &dest_arg],
    );
    assert!(code == 0 && out.contains("SUCCESS"), "{out}{err}");
    assert_eq!(t.ask("answer"), "1");
    let (code, out, err) = run("false");
    assert_ne!(
        code, 0,
        "a failed health check must fail the rollout:\n{out}"
    );
    assert!(
        out.contains("failed its health check: the patch was reverted there"),
        "{out}\n{err}"
    );
    assert_eq!(t.ask("answer"), "1", "reverted after the failed check");
}

fn skipped(reason: &str) {
    println!("skipped: ansible-core could not be installed: {reason}");
    eprintln!("skipped: ansible-core could not be installed: {reason}");
}

/// The sanity tests `make ansible-sanity` runs (keep the two lists alike).
const SANITY_TESTS: &[&str] = &[
    "compile",
    "validate-modules",
    "yamllint",
    "pep8",
    "shebang",
    "line-endings",
    "empty-init",
    "ansible-doc",
    "runtime-metadata",
    "no-assert",
    "no-smart-quotes",
    "use-argspec-type-path",
    "ignores",
    "import",
    "pylint",
];

/// `ansible-test sanity` on the collection (about 15 s once its
/// environments exist under target/ansible-test-home; a first run installs
/// their requirements from PyPI). Its pip bootstrap, normally downloaded
/// from ci-files.testing.ansible.com, is scripts/ansible-test-get-pip.py.
#[test]
fn the_collection_passes_ansible_test_sanity() {
    let started = Instant::now();
    let venv = match ensure_venv() {
        Ok(v) => v,
        Err(reason) => return skipped(&reason),
    };
    let home = venv.with_file_name("ansible-test-home");
    let cache = home.join(".ansible/test/cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::copy(
        repo_root().join("scripts/ansible-test-get-pip.py"),
        cache.join("get_pip_24_2.py"),
    )
    .unwrap();
    // The venv's own Python version (3.11 on the CI machine).
    let out = Command::new(venv.join("bin/python"))
        .args(["-c", "import sys; print('%d.%d' % sys.version_info[:2])"])
        .output()
        .expect("running the venv's python");
    let python = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let mut cmd = Command::new(venv.join("bin/ansible-test"));
    cmd.args(["sanity", "--python", &python, "--requirements"])
        .args(SANITY_TESTS.iter().flat_map(|t| ["--test", t]))
        .current_dir(repo_root().join("ansible/collections/ansible_collections/ulp/livepatch"))
        .env("HOME", &home)
        .env("PYTHONWARNINGS", "ignore");
    let (code, out, err) = run_bounded(cmd, "ansible-test sanity", Duration::from_secs(900));
    eprintln!(
        "ansible: ansible-test sanity took {:.1?}",
        started.elapsed()
    );
    assert_eq!(code, 0, "ansible-test sanity:\n{out}\n{err}");
}

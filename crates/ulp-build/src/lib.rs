//! `ulp build`: a live-patch container from source diffs.
//!
//! 1. The diffs are applied ([`diff`]) to copies of the files they touch, in
//!    a temporary directory; the source tree is never written.
//! 2. Each touched file is compiled twice with its own flags from the
//!    compilation database ([`compdb`]) plus `-ffunction-sections
//!    -fdata-sections`: the original (before) and the copy (after), in
//!    parallel.
//! 3. The two objects are compared function by function ([`objfile`]):
//!    bytes with relocated fields masked, and relocations by target name
//!    and addend (compiler numbers after a period ignored, merged strings
//!    and constants by their contents). See [`compare`].
//! 4. The patched file is compiled a third time for the container, with
//!    every mutable variable of the file that the target has turned into
//!    a pointer (`-Dv=(*__ulp_ref_v)`) that the runtime fills with the
//!    target's address (`#v:__ulp_ref_v:TOFF:POFF` in the .dsc), a
//!    thread-local one into a call returning `__tls_get_addr` of the
//!    `tls_index` the runtime fills (`#%v:...`), a static local through a
//!    pointer its function's copy declares `extern` (`localize`),
//!    and a global alias `__ulp_new_f` for each replaced function `f`.
//! 5. The container is linked with the compiler driver (`-shared`), the
//!    .dsc written, and both packed by [`ulp_container::pack::pack`], the
//!    packer's own code.
//!
//! Anything refused is refused before a file is written.

pub mod compare;
pub mod compdb;
pub mod diff;
pub mod objfile;
pub mod source;

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use compare::FileAnalysis;
use objfile::LinkedSymbol;

/// What `ulp build` is given.
#[derive(Clone, Debug, Default)]
pub struct Options {
    pub compile_commands: PathBuf,
    pub target: PathBuf,
    /// OUT.so; the .dsc goes beside it.
    pub output: PathBuf,
    pub description: Option<String>,
    /// The tree the diff paths are relative to (default: the database's
    /// directory).
    pub source: Option<PathBuf>,
    pub diffs: Vec<PathBuf>,
    /// Called, before anything is written, with the target and the replaced
    /// functions (name, address in the target): an `Err(message)` refuses
    /// the build (`ulp build` checks that each can be redirected).
    pub check_units: Option<UnitCheck>,
}

/// See [`Options::check_units`].
pub type UnitCheck = fn(&Path, &[(String, u64)]) -> Result<(), String>;

/// A replaced function.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Replaced {
    pub name: String,
    /// The new function's name in the container.
    pub new_name: String,
    pub file: String,
    /// `changed code` or `inlines a changed function` (or a clone's note).
    pub reason: String,
    /// Its address in the target.
    pub target_address: u64,
}

/// What a successful build made.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub container: PathBuf,
    pub dsc: PathBuf,
    pub replaced: Vec<Replaced>,
    /// New functions (in the container, not redirected).
    pub added: Vec<String>,
    /// Functions whose only change is line numbers (not replaced).
    pub line_numbers_only: Vec<String>,
    /// Target variables the container reaches through reference pointers.
    pub references: Vec<String>,
    /// Wall time of the before/after compiles, of the container compile,
    /// and of the whole build, in milliseconds.
    pub compare_compile_ms: u128,
    pub container_compile_ms: u128,
    pub total_ms: u128,
}

/// Why a build failed: `usage` ones exit 64, the others 1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Error {
    pub usage: bool,
    pub message: String,
}

impl Error {
    pub fn usage(m: impl Into<String>) -> Error {
        Error {
            usage: true,
            message: m.into(),
        }
    }
    pub fn new(m: impl Into<String>) -> Error {
        Error {
            usage: false,
            message: m.into(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// A temporary directory removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> Result<Scratch, Error> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let p = std::env::temp_dir().join(format!("ulp-build-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p)
            .map_err(|e| Error::new(format!("cannot create '{}': {e}", p.display())))?;
        Ok(Scratch(p))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("ULP_BUILD_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// The bug labels `ulp patches` shows, found in `text`: `CVE-YYYY-N`,
/// `bsc#N`, `jsc#X`, `boo#N`, `bnc#N`.
pub fn labels(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for word in text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '#' || c == '-')) {
        let word = word.trim_matches('-');
        let ok = if let Some(rest) = word.strip_prefix("CVE-") {
            let mut parts = rest.split('-');
            matches!((parts.next(), parts.next(), parts.next()),
                (Some(y), Some(n), None) if y.len() == 4 && y.chars().all(|c| c.is_ascii_digit())
                    && !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
        } else {
            ["bsc#", "jsc#", "boo#", "bnc#"].iter().any(|p| {
                word.strip_prefix(p).is_some_and(|r| {
                    !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                })
            })
        };
        if ok && !out.iter().any(|w| w == word) {
            out.push(word.to_string());
        }
    }
    out
}

/// One touched file being built.
struct Unit {
    /// The diff's path (relative to the source tree).
    path: String,
    basename: String,
    entry: compdb::Entry,
    patched: diff::Patched,
    /// The file argument as the database writes it.
    as_written: String,
    dir: PathBuf,
    /// The guess for the container's compile made before any compile, from
    /// the target: the file's variables that become references, and the
    /// functions that get a `__ulp_new_` alias.
    guess_refs: Vec<compare::RefVar>,
    guess_aliases: Vec<String>,
}

/// Runs the jobs (what, command, directory) in parallel; returns each
/// one's success and standard error.
fn run_jobs(mut jobs: Vec<(String, Vec<String>, PathBuf)>) -> Result<Vec<(bool, String)>, Error> {
    let mut children: Vec<(String, Child)> = Vec::new();
    for (what, cmd, dir) in jobs.drain(..) {
        let child = Command::new(&cmd[0])
            .args(&cmd[1..])
            .current_dir(&dir)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error::new(format!("cannot run '{}' ({what}): {e}", cmd[0])))?;
        children.push((what, child));
    }
    let mut out = Vec::new();
    for (what, child) in children {
        let done = child
            .wait_with_output()
            .map_err(|e| Error::new(format!("{what}: {e}")))?;
        out.push((
            done.status.success(),
            String::from_utf8_lossy(&done.stderr).into_owned(),
        ));
    }
    Ok(out)
}

/// The error of a failed job: its name and the first lines of its messages.
fn job_failure(what: &str, stderr: &str) -> Error {
    let shown: Vec<&str> = stderr.lines().take(20).collect();
    Error::new(format!("{what} failed:\n{}", shown.join("\n")))
}

/// Runs the jobs in parallel; the first failure is the error.
fn run_all(jobs: Vec<(String, Vec<String>, PathBuf)>) -> Result<Vec<String>, Error> {
    let names: Vec<String> = jobs.iter().map(|j| j.0.clone()).collect();
    let results = run_jobs(jobs)?;
    if let Some((i, (_, err))) = results.iter().enumerate().find(|(_, (ok, _))| !ok) {
        return Err(job_failure(&names[i], err));
    }
    Ok(results.into_iter().map(|(_, e)| e).collect())
}

fn read_file(p: &Path, what: &str) -> Result<Vec<u8>, Error> {
    std::fs::read(p).map_err(|e| Error::new(format!("cannot read {what} '{}': {e}", p.display())))
}

/// The target's symbol `name`: a global one, or a local one of the
/// source file `basename`. Errors when several locals match.
fn target_symbol<'a>(
    tsyms: &'a [LinkedSymbol],
    name: &str,
    global: bool,
    basename: &str,
    function: bool,
) -> Result<Option<&'a LinkedSymbol>, String> {
    let found: Vec<&LinkedSymbol> = tsyms
        .iter()
        .filter(|s| s.name == name && s.function == function)
        .filter(|s| {
            if global {
                s.global
            } else {
                !s.global && s.file.as_deref() == Some(basename)
            }
        })
        .collect();
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one)),
        _ => Err(format!(
            "the target has {} local symbols '{name}' of files named '{basename}': \
             which one is meant cannot be told",
            found.len()
        )),
    }
}

/// Builds the live patch (see the module comment).
pub fn build(o: &Options) -> Result<Report, Error> {
    let start = Instant::now();
    let out_name = o.output.to_string_lossy().into_owned();
    let Some(stem) = out_name.strip_suffix(".so") else {
        return Err(Error::usage(format!(
            "--output '{out_name}' must end with .so (the .dsc is written beside it)"
        )));
    };
    if o.diffs.is_empty() {
        return Err(Error::usage("'build' needs at least one DIFF"));
    }
    let dsc_path = PathBuf::from(format!("{stem}.dsc"));
    let output = compdb::normalize(&std::env::current_dir().unwrap_or_default().join(&o.output));
    let dsc_path = compdb::normalize(&std::env::current_dir().unwrap_or_default().join(&dsc_path));
    if let Some(parent) = output.parent() {
        if !parent.is_dir() {
            return Err(Error::new(format!(
                "--output: the directory '{}' does not exist",
                parent.display()
            )));
        }
    }
    let db = compdb::read(&o.compile_commands).map_err(Error::new)?;
    let source = match &o.source {
        Some(s) => compdb::canonical(s),
        None => compdb::canonical(o.compile_commands.parent().unwrap_or(Path::new("."))),
    };
    let source = if source.as_os_str().is_empty() {
        compdb::canonical(Path::new("."))
    } else {
        source
    };
    if !source.is_dir() {
        return Err(Error::new(format!(
            "the source tree '{}' is not a directory",
            source.display()
        )));
    }
    let mut diffs = Vec::new();
    for d in &o.diffs {
        let text = String::from_utf8(read_file(d, "the diff")?)
            .map_err(|_| Error::new(format!("the diff '{}' is not text", d.display())))?;
        diffs.push((d.display().to_string(), text));
    }
    let patched = diff::apply_all(&diffs, |p| {
        let full = source.join(p);
        std::fs::read_to_string(&full).map_err(|e| {
            format!(
                "the diff names '{p}', which cannot be read in the source tree ('{}'): {e}",
                full.display()
            )
        })
    })
    .map_err(Error::new)?;

    let target_data = read_file(&o.target, "the target")?;
    let tsyms = objfile::linked_symbols(&target_data)
        .map_err(|e| Error::new(format!("'{}': {e}", o.target.display())))?;
    if !tsyms.iter().any(|s| !s.global) {
        return Err(Error::new(format!(
            "the target '{}' has no .symtab (stripped): ulp build needs its local symbols \
             (separate debug files are not supported yet)",
            o.target.display()
        )));
    }

    let scratch = Scratch::new()?;
    let mut units: Vec<Unit> = Vec::new();
    for (n, (path, p)) in patched.into_iter().enumerate() {
        let abs = compdb::canonical(&source.join(&path));
        let entry = db
            .iter()
            .find(|e| compdb::canonical(&e.file) == abs)
            .cloned()
            .ok_or_else(|| {
                let header = matches!(
                    abs.extension().and_then(|e| e.to_str()),
                    Some("h" | "hh" | "hpp" | "hxx" | "inc" | "def")
                );
                Error::new(if header {
                    format!(
                        "'{path}' is a header: diffs of headers are not supported yet \
                         (which files include it is not known)"
                    )
                } else {
                    format!(
                        "'{path}' has no entry in the compilation database '{}'",
                        o.compile_commands.display()
                    )
                })
            })?;
        let basename = abs
            .file_name()
            .map(|b| b.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !basename.ends_with(".c") {
            return Err(Error::new(format!(
                "'{path}' is not a C file (.c): only C is supported yet (C++ names and \
                 aliases need another container build)"
            )));
        }
        let dir = scratch.0.join(format!("{n}"));
        std::fs::create_dir_all(dir.join("after"))
            .and_then(|()| std::fs::create_dir_all(dir.join("container")))
            .map_err(|e| Error::new(format!("'{}': {e}", dir.display())))?;
        units.push(Unit {
            path,
            basename,
            entry,
            patched: p,
            as_written: String::new(),
            dir,
            guess_refs: Vec::new(),
            guess_aliases: Vec::new(),
        });
    }

    // Before and after, all in parallel.
    // Debug information never changes the code (GCC's rule): the compiles
    // that are only compared go without it (`-g0` last wins).
    let sections = vec![
        "-ffunction-sections".to_string(),
        "-fdata-sections".to_string(),
        "-g0".to_string(),
    ];
    let mut jobs = Vec::new();
    for u in &mut units {
        let before_o = u.dir.join("before.o");
        let (cmd, written) =
            compdb::command_for(&u.entry, None, &before_o, &sections).map_err(Error::new)?;
        u.as_written = written;
        jobs.push((
            format!("compiling '{}' (before the diff)", u.path),
            cmd,
            u.entry.directory.clone(),
        ));
        let copy = u.dir.join("after").join(&u.basename);
        std::fs::write(&copy, &u.patched.text)
            .map_err(|e| Error::new(format!("'{}': {e}", copy.display())))?;
        let mut extra = sections.clone();
        extra.extend(copy_flags(u, &copy));
        let (cmd, _) = compdb::command_for(&u.entry, Some(&copy), &u.dir.join("after.o"), &extra)
            .map_err(Error::new)?;
        jobs.push((
            format!("compiling '{}' (after the diff)", u.path),
            cmd,
            u.entry.directory.clone(),
        ));
    }
    // The container's compile, guessed from the target and run alongside.
    for u in &mut units {
        let (refs, aliases) = guess(&tsyms, &u.basename, &u.patched.text);
        u.guess_refs = refs;
        u.guess_aliases = aliases;
    }
    // A name two files define (static functions) would be defined twice in
    // the container: no alias; if such a function is replaced, the exact
    // compile below runs.
    let all: Vec<String> = units.iter().flat_map(|u| u.guess_aliases.clone()).collect();
    for u in &mut units {
        u.guess_aliases
            .retain(|f| all.iter().filter(|g| *g == f).count() == 1);
    }
    for (n, u) in units.iter().enumerate() {
        jobs.push(container_job(
            u,
            n,
            &u.guess_refs,
            &u.guess_aliases,
            "container.guess.o",
        )?);
    }
    let t0 = Instant::now();
    let results = run_jobs(jobs)?;
    for (i, (ok, err)) in results.iter().enumerate() {
        if !ok && i < 2 * units.len() {
            let u = &units[i / 2];
            let when = if i % 2 == 0 { "before" } else { "after" };
            return Err(job_failure(
                &format!("compiling '{}' ({when} the diff)", u.path),
                err,
            ));
        }
    }
    let guess_results: Vec<(bool, String)> = results[2 * units.len()..].to_vec();
    let compare_compile_ms = t0.elapsed().as_millis();

    // Compare.
    let mut analyses: Vec<FileAnalysis> = Vec::new();
    for u in &units {
        let before = objfile::read_object(&read_file(&u.dir.join("before.o"), "the object")?)
            .map_err(Error::new)?;
        let after = objfile::read_object(&read_file(&u.dir.join("after.o"), "the object")?)
            .map_err(Error::new)?;
        let a = compare::analyse(
            &u.path,
            &u.basename,
            &before,
            &after,
            &u.patched,
            &tsyms,
            &target_data,
        )
        .map_err(Error::new)?;
        analyses.push(a);
    }
    if analyses.iter().all(|a| a.replaced.is_empty()) {
        let lines: Vec<String> = analyses.iter().flat_map(|a| a.line_only.clone()).collect();
        return Err(Error::new(if lines.is_empty() {
            "the diffs change no function: nothing to patch".to_string()
        } else {
            format!(
                "the diffs change no function but line numbers ({}): nothing to patch",
                lines.join(", ")
            )
        }));
    }
    // New names must not collide across files.
    let mut seen = BTreeSet::new();
    for a in &analyses {
        for r in &a.replaced {
            if !seen.insert(r.name.clone()) {
                return Err(Error::new(format!(
                    "function '{}' is replaced in two files: not supported yet",
                    r.name
                )));
            }
        }
    }

    // The container's object: the guessed compile when the guess was right
    // (the same variables, an alias for every replaced function, no
    // warning about them), else a compile with what the comparison found.
    let t1 = Instant::now();
    let guessed = units
        .iter()
        .zip(&analyses)
        .zip(&guess_results)
        .all(|((u, a), (ok, err))| {
            *ok && a
                .references
                .iter()
                .all(|v| u.guess_refs.iter().any(|g| g.name == v.name))
                && a.replaced.iter().all(|r| u.guess_aliases.contains(&r.name))
                && !err
                    .lines()
                    .any(|l| l.contains("shadows") && l.contains("__ulp_ref_"))
        });
    // ULP_BUILD_DEBUG: why a guessed compile was not used (development aid).
    if !guessed && std::env::var_os("ULP_BUILD_DEBUG").is_some() {
        for (u, (ok, err)) in units.iter().zip(&guess_results) {
            let head: Vec<&str> = err.lines().take(12).collect();
            eprintln!(
                "ulp: build: guessed compile of '{}' not used (compiled: {ok}):\n{}",
                u.path,
                head.join("\n")
            );
        }
    }
    if guessed {
        for u in &units {
            std::fs::rename(u.dir.join("container.guess.o"), u.dir.join("container.o"))
                .map_err(|e| Error::new(format!("'{}': {e}", u.dir.display())))?;
        }
    } else {
        let mut jobs = Vec::new();
        for (n, (u, a)) in units.iter().zip(&analyses).enumerate() {
            let aliases: Vec<String> = a.replaced.iter().map(|r| r.name.clone()).collect();
            jobs.push(container_job(u, n, &a.references, &aliases, "container.o")?);
        }
        let stderrs = match run_all(jobs) {
            Ok(s) => s,
            Err(e) => {
                let named: Vec<String> = analyses
                    .iter()
                    .enumerate()
                    .flat_map(|(n, a)| a.references.iter().map(move |v| (n, v)))
                    .filter(|(n, v)| {
                        let source = v.local.as_ref().map_or(v.name.as_str(), |l| &l.base);
                        mentions(&e.message, &pointer_name(*n, v)) || mentions(&e.message, source)
                    })
                    .map(|(_, v)| format!("'{}'", v.shown()))
                    .collect();
                if named.is_empty() {
                    return Err(e);
                }
                return Err(Error::new(format!(
                    "variable {} cannot be reached through a reference pointer: the file does \
                     not compile with it as one (its name used otherwise, its address in a \
                     constant initializer, or a type a pointer cannot stand for, such as an \
                     array declared without its size): {}",
                    named.join(", "),
                    e.message
                )));
            }
        };
        for (n, (err, a)) in stderrs.iter().zip(&analyses).enumerate() {
            for line in err.lines().filter(|l| l.contains("shadows")) {
                if let Some(v) = a
                    .references
                    .iter()
                    .find(|v| mentions(line, &pointer_name(n, v)))
                {
                    return Err(Error::new(format!(
                        "variable '{}' of '{}': a declaration in the file has the same name \
                         (a local or a parameter), so it cannot be turned into a reference: \
                         rename one ({})",
                        v.shown(),
                        a.path,
                        line.trim()
                    )));
                }
            }
        }
    }
    let container_compile_ms = t1.elapsed().as_millis();

    if let Some(check) = o.check_units {
        let units: Vec<(String, u64)> = analyses
            .iter()
            .flat_map(|a| a.replaced.iter())
            .map(|r| (r.name.clone(), r.target_address))
            .collect();
        check(&o.target, &units).map_err(Error::new)?;
    }

    // Link.
    let container_tmp = scratch.0.join("container.so");
    let mut base = vec![compdb::compiler(&units[0].entry).to_string()];
    base.extend(
        units[0]
            .entry
            .arguments
            .iter()
            .filter(|a| {
                a.starts_with("-m") || a.starts_with("-fuse-ld") || a.starts_with("--sysroot")
            })
            .cloned(),
    );
    let mut link = base.clone();
    link.extend(
        ["-shared", "-Wl,--build-id", "-o"]
            .iter()
            .map(|s| s.to_string()),
    );
    link.push(container_tmp.display().to_string());
    for u in &units {
        link.push(u.dir.join("container.o").display().to_string());
    }
    // The static locals' pointers, in a file of their own.
    let with_refs: Vec<(usize, &[compare::RefVar])> = analyses
        .iter()
        .enumerate()
        .map(|(n, a)| (n, a.references.as_slice()))
        .collect();
    if analyses
        .iter()
        .any(|a| a.references.iter().any(|v| v.local.is_some()))
    {
        let c = scratch.0.join("ulp_locals.c");
        std::fs::write(&c, locals_file(&with_refs))
            .map_err(|e| Error::new(format!("'{}': {e}", c.display())))?;
        let obj = scratch.0.join("ulp_locals.o");
        let mut cc = base.clone();
        cc.extend(["-fPIC", "-O2", "-c", "-o"].iter().map(|s| s.to_string()));
        cc.push(obj.display().to_string());
        cc.push(c.display().to_string());
        run_all(vec![(
            "compiling the static locals' references".into(),
            cc,
            scratch.0.clone(),
        )])?;
        link.push(obj.display().to_string());
    }
    run_all(vec![(
        "linking the container".into(),
        link,
        scratch.0.clone(),
    )])?;

    // References: the pointers' places in the container.
    let cdata = read_file(&container_tmp, "the container")?;
    let csyms = objfile::linked_symbols(&cdata).map_err(Error::new)?;
    let mut dsc = String::new();
    if let Some(d) = &o.description {
        for line in d.lines() {
            dsc.push_str(&format!("!{line}\n"));
        }
        for l in labels(d) {
            dsc.push_str(&format!("!{l}\n"));
        }
    }
    dsc.push_str(&format!("{}\n", output.display()));
    dsc.push_str(&format!(
        "@{}\n",
        compdb::normalize(&std::env::current_dir().unwrap_or_default().join(&o.target)).display()
    ));
    let mut report = Report {
        container: output.clone(),
        dsc: dsc_path.clone(),
        compare_compile_ms,
        container_compile_ms,
        ..Report::default()
    };
    for (index, (u, a)) in units.iter().zip(&analyses).enumerate() {
        for r in &a.replaced {
            dsc.push_str(&format!("{}:{}\n", r.name, r.new_name));
            report.replaced.push(r.clone());
        }
        report.added.extend(a.added.iter().cloned());
        report.line_numbers_only.extend(a.line_only.iter().cloned());
        // Every variable made a pointer gets its reference (a guessed
        // compile may have more than the changed code reaches: their
        // pointers are filled too, so no copy in the container is left
        // pointing nowhere).
        let made = if guessed {
            &u.guess_refs
        } else {
            &a.references
        };
        report
            .references
            .extend(a.references.iter().map(compare::RefVar::shown));
        for v in made {
            let pname = filled_name(index, v);
            let place = csyms.iter().find(|s| {
                s.name == pname
                    && !s.function
                    && (if v.local.is_some() {
                        true
                    } else if v.global && !v.tls {
                        s.global
                    } else {
                        s.file.as_deref() == Some(u.basename.as_str())
                    })
            });
            let Some(place) = place else {
                if a.references.iter().any(|r| r.name == v.name) {
                    return Err(Error::new(format!(
                        "the container has no variable '{pname}' for the reference to '{}'",
                        v.shown()
                    )));
                }
                continue;
            };
            dsc.push_str(&format!(
                "#{}{}:{}:{:#x}:{:#x}\n",
                if v.tls { "%" } else { "" },
                v.name,
                pname,
                v.target_address,
                place.address
            ));
        }
    }
    let tmp_dsc = scratch.0.join("container.dsc");
    std::fs::write(&tmp_dsc, &dsc)
        .map_err(|e| Error::new(format!("'{}': {e}", tmp_dsc.display())))?;
    let opts = ulp_container::pack::PackOptions {
        container_override: Some(container_tmp.clone()),
        ..Default::default()
    };
    ulp_container::pack::pack(&tmp_dsc, &opts)
        .map_err(|e| Error::new(format!("packing the container: {e}")))?;
    install(&container_tmp, &output)?;
    if let Err(e) = std::fs::write(&dsc_path, &dsc) {
        let _ = std::fs::remove_file(&output);
        return Err(Error::new(format!(
            "cannot write '{}': {e}",
            dsc_path.display()
        )));
    }
    report.total_ms = start.elapsed().as_millis();
    Ok(report)
}

/// Whether `text` has the identifier `word` (not as part of a longer one).
fn mentions(text: &str, word: &str) -> bool {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    text.match_indices(word)
        .any(|(at, _)| !text[..at].ends_with(ident) && !text[at + word.len()..].starts_with(ident))
}

/// Moves the finished container to its place (a copy when the rename
/// crosses file systems), never leaving half a file there.
fn install(from: &Path, to: &Path) -> Result<(), Error> {
    if std::fs::rename(from, to).is_ok() {
        return Ok(());
    }
    let tmp = to.with_extension("so.ulp-tmp");
    std::fs::copy(from, &tmp)
        .and_then(|_| std::fs::rename(&tmp, to))
        .map_err(|e| {
            let _ = std::fs::remove_file(&tmp);
            Error::new(format!("cannot write '{}': {e}", to.display()))
        })
}

/// The flags that make a copy in the scratch directory compile as the
/// original did: its quoted includes from the original's directory, and
/// `__FILE__` as the database writes the file.
fn copy_flags(u: &Unit, copy: &Path) -> Vec<String> {
    let orig_dir = u.entry.file.parent().unwrap_or(Path::new("/"));
    vec![
        "-iquote".into(),
        orig_dir.display().to_string(),
        format!("-fmacro-prefix-map={}={}", copy.display(), u.as_written),
    ]
}

/// The name of the pointer (of the function, for a thread-local
/// variable) through which the container's copy of unit `n` reaches `v`.
fn pointer_name(n: usize, v: &compare::RefVar) -> String {
    match &v.local {
        Some(l) => format!("__ulp_sl{n}_{}_{}", l.owner, l.base),
        None => format!("__ulp_ref_{}", v.name),
    }
}

/// The variable the runtime fills for `v`, as the .dsc names it: the
/// pointer, or for a thread-local variable its `tls_index`.
fn filled_name(n: usize, v: &compare::RefVar) -> String {
    let p = pointer_name(n, v);
    if v.tls {
        p.replacen("__ulp_", "__ulp_tls_", 1)
    } else {
        p
    }
}

/// What `v`'s name stands for in the container's copy: a dereference of
/// the pointer, or of what the function returns for a thread-local one.
fn replacement(n: usize, v: &compare::RefVar) -> String {
    let p = pointer_name(n, v);
    if v.tls {
        format!("(*{p}())")
    } else {
        format!("(*{p})")
    }
}

/// The function that gives this thread's address of thread-local `v`:
/// `__tls_get_addr` of the `tls_index` the runtime fills (module and
/// offset: the address differs per thread, so no pointer can stand for
/// it). `ret` is its return type.
fn tls_function(n: usize, v: &compare::RefVar, ret: &str, hidden: bool) -> String {
    let p = pointer_name(n, v);
    let idx = filled_name(n, v);
    let vis = if hidden {
        "__attribute__((visibility(\"hidden\"))) "
    } else {
        ""
    };
    format!(
        "{vis}{ret} {p}(void)\n{{\n    extern void *__tls_get_addr(void *);\n    \
         return ({ret})__tls_get_addr({idx});\n}}\n"
    )
}

/// What is appended to the container's copy of a file: a global alias for
/// each function in `aliases`, the reference pointers kept (their address
/// taken, so the compiler cannot take them for constants), and for each
/// file-scope thread-local reference its `tls_index` and function.
fn trailer(n: usize, aliases: &[String], refs: &[compare::RefVar]) -> String {
    let mut t = String::from("\n/* Added by ulp build. */\n");
    for f in aliases {
        t.push_str(&format!(
            "extern __typeof__({f}) __ulp_new_{f} __attribute__((alias(\"{f}\"), visibility(\"default\")));\n"
        ));
    }
    let plain: Vec<&compare::RefVar> = refs
        .iter()
        .filter(|v| !v.tls && v.local.is_none())
        .collect();
    if !plain.is_empty() {
        t.push_str("__attribute__((used)) static void *const __ulp_keep_refs[] = {\n");
        for v in plain {
            t.push_str(&format!("    (void *)&{},\n", pointer_name(n, v)));
        }
        t.push_str("};\n");
    }
    for v in refs.iter().filter(|v| v.tls && v.local.is_none()) {
        let p = pointer_name(n, v);
        t.push_str(&format!(
            "__attribute__((used)) static void *{}[2];\n",
            filled_name(n, v)
        ));
        // No storage class: the linkage of the declaration the define
        // made of the variable's (static or not).
        t.push_str(&tls_function(n, v, &format!("__typeof__({p}())"), v.global));
    }
    t
}

/// The separate file that defines the pointers (and `tls_index`es and
/// functions) of the static local references of every unit: hidden, and
/// in another translation unit than their `extern` declarations, whose
/// types it does not need to know.
fn locals_file(units: &[(usize, &[compare::RefVar])]) -> String {
    let mut t = String::from("/* Written by ulp build: the static locals' references. */\n");
    for (n, refs) in units {
        for v in refs.iter().filter(|v| v.local.is_some()) {
            t.push_str(&format!(
                "__attribute__((visibility(\"hidden\"), used)) void *{}{};\n",
                filled_name(*n, v),
                if v.tls { "[2]" } else { "" }
            ));
            if v.tls {
                t.push_str(&tls_function(*n, v, "void *", true));
            }
        }
    }
    t
}

/// In `text`, the static local `v` of its function made a reference: its
/// declaration `static T NAME = I;` becomes `extern T (*PTR);` (the
/// initializer blanked, `static` and `extern` of the same length), and
/// from the declaration's line to the end of its block `NAME` is a macro
/// for `(*PTR)` (`(*PTR())` for a thread-local one), with `#line` lines
/// keeping the line numbers.
fn localize(text: &str, n: usize, v: &compare::RefVar) -> Result<String, Error> {
    let Some(l) = &v.local else {
        return Ok(text.to_string());
    };
    let decls = source::static_locals(text, &l.base);
    let mine: Vec<&source::LocalDecl> = decls.iter().filter(|d| d.owner == l.owner).collect();
    let [d] = mine.as_slice() else {
        return Err(Error::new(format!(
            "static local variable '{}' of '{}': its declaration is not found once in the \
             container's copy",
            l.base, l.owner
        )));
    };
    let mut b = text.as_bytes().to_vec();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let decl_line_start = text[..d.start].rfind('\n').map_or(0, |p| p + 1);
    let after_block = text[d.block_end..]
        .find('\n')
        .map_or(text.len(), |p| d.block_end + p + 1);
    let (decl_line, next_line) = (line_of(d.start), line_of(d.block_end) + 1);
    if let Some(eq) = d.eq {
        for x in &mut b[eq..d.end] {
            if *x != b'\n' {
                *x = b' ';
            }
        }
    }
    for at in d.start..d.end {
        for w in ["__thread", "_Thread_local", "thread_local"] {
            if source::word_at(&b, at, w) {
                b[at..at + w.len()].fill(b' ');
            }
        }
    }
    b[d.start..d.start + 6].copy_from_slice(b"extern");
    let mut out = Vec::with_capacity(b.len() + 200);
    out.extend_from_slice(&b[..decl_line_start]);
    out.extend_from_slice(
        format!(
            "#define {} {}\n#line {decl_line}\n",
            l.base,
            replacement(n, v)
        )
        .as_bytes(),
    );
    out.extend_from_slice(&b[decl_line_start..after_block]);
    if after_block == text.len() && !text.ends_with('\n') {
        out.push(b'\n');
    }
    out.extend_from_slice(format!("#undef {}\n#line {next_line}\n", l.base).as_bytes());
    out.extend_from_slice(&b[after_block..]);
    String::from_utf8(out).map_err(|_| Error::new("the file is not UTF-8"))
}

/// The compile of the container's copy of unit `n` (`u`): the variables
/// `refs` made reference pointers (their initializers blanked,
/// `-Dv=(*__ulp_ref_v)`; see [`localize`] for static locals), an alias
/// for each of `aliases`.
fn container_job(
    u: &Unit,
    n: usize,
    refs: &[compare::RefVar],
    aliases: &[String],
    object: &str,
) -> Result<(String, Vec<String>, PathBuf), Error> {
    let copy = u.dir.join("container").join(&u.basename);
    let mut text = u.patched.text.clone();
    // Static locals from the last declaration to the first, so that the
    // lines added keep the others' positions.
    let mut locals: Vec<&compare::RefVar> = refs.iter().filter(|v| v.local.is_some()).collect();
    let pos = |v: &&compare::RefVar| {
        let l = v.local.as_ref().expect("a static local");
        source::static_locals(&u.patched.text, &l.base)
            .iter()
            .find(|d| d.owner == l.owner)
            .map_or(0, |d| d.start)
    };
    locals.sort_by_key(|v| std::cmp::Reverse(pos(v)));
    for v in locals {
        text = localize(&text, n, v)?;
    }
    let self_referring = source::self_referring_macros(&u.patched.text);
    for v in refs.iter().filter(|v| v.local.is_none()) {
        text = source::blank_initializer(&text, &v.name);
        if v.tls {
            text = source::blank_tls_keyword(&text, &v.name);
        }
        if self_referring.contains(&v.name) {
            text = source::rewrite_self_defines(&text, &v.name, &replacement(n, v));
        }
    }
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&trailer(n, aliases, refs));
    std::fs::write(&copy, text).map_err(|e| Error::new(format!("'{}': {e}", copy.display())))?;
    let mut extra = vec![
        "-ffunction-sections".to_string(),
        "-fdata-sections".to_string(),
    ];
    extra.extend(copy_flags(u, &copy));
    extra.extend(
        ["-Wshadow", "-Wno-error", "-Wno-int-conversion"]
            .iter()
            .map(|s| s.to_string()),
    );
    for v in refs.iter().filter(|v| v.local.is_none()) {
        extra.push(format!("-D{}={}", v.name, replacement(n, v)));
    }
    let (cmd, _) = compdb::command_for(&u.entry, Some(&copy), &u.dir.join(object), &extra)
        .map_err(Error::new)?;
    Ok((
        format!("compiling '{}' for the container", u.path),
        cmd,
        u.entry.directory.clone(),
    ))
}

/// The guess, from the target alone, of what the container's compile
/// needs: the mutable variables of this file the target has (its statics
/// after the file's `STT_FILE` symbol, and globals) that the patched text
/// declares at file scope, and the target's functions whose definition the
/// patched text has (the replaced ones are among them).
fn guess(
    tsyms: &[LinkedSymbol],
    basename: &str,
    text: &str,
) -> (Vec<compare::RefVar>, Vec<String>) {
    let ours = |s: &&LinkedSymbol| {
        !s.name.contains('.') && (s.global || s.file.as_deref() == Some(basename))
    };
    let mut refs: Vec<compare::RefVar> = Vec::new();
    let mut aliases: Vec<String> = Vec::new();
    let defined = source::defined_functions(text);
    let declared = source::declared_names(text);
    // A variable whose address the text takes may be in a constant
    // initializer, where a reference pointer cannot stand: left out of the
    // guess (if the changed code reaches it, the exact compile decides).
    let taken = source::address_taken(text);
    // A name the text also defines as a macro is not the variable there,
    // unless the macro's body names the variable itself (SQLite's
    // `#define mem0 GLOBAL(struct Mem0Global, mem0)`): that body is
    // rewritten in the container's copy.
    let mut macros = source::macro_names(text);
    for m in source::self_referring_macros(text) {
        macros.remove(&m);
    }
    for s in tsyms.iter().filter(ours) {
        if s.function {
            if !aliases.contains(&s.name) && defined.contains(&s.name) {
                aliases.push(s.name.clone());
            }
        } else if s.mutable
            && !refs.iter().any(|r| r.name == s.name)
            && declared.contains(&s.name)
            && !taken.contains(&s.name)
            && !macros.contains(&s.name)
        {
            refs.push(compare::RefVar {
                name: s.name.clone(),
                global: s.global,
                target_address: s.address,
                tls: s.tls,
                local: None,
            });
        }
    }
    (refs, aliases)
}

#[cfg(test)]
mod tests {
    use super::labels;

    #[test]
    fn finds_bug_labels() {
        assert_eq!(
            labels("Fix overflow (CVE-2026-12345, bsc#1234567); see boo#9 and CVE-x"),
            ["CVE-2026-12345", "bsc#1234567", "boo#9"]
        );
        assert!(labels("nothing here").is_empty());
    }
}

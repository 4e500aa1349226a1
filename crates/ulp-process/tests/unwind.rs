//! Unwinding stopped threads of a real process (tests/fixtures/unwind):
//! through a library installed with its SONAME link, through a signal
//! handler on an alternate stack, through a function without unwind
//! tables (frame pointers), and from the main thread to `_start`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{deadline, wait_in_syscall, Target, TempDir};
use object::{Object, ObjectSegment, ObjectSymbol, SymbolKind};
use ulp_process::{
    maps, read_mem, unwind::MAX_FRAMES, FrameKind, Pid, RemoteAddr, Stack, StartRegs, Stopped, Tid,
    Unwinder,
};

const SYS_FUTEX: i64 = 202;

fn gcc(args: &[&str]) {
    let out = Command::new("gcc").args(args).output().expect("run gcc");
    assert!(
        out.status.success(),
        "gcc {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fixture's C sources.
fn source(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/unwind")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// Builds the fixture into `dir`: libunw.so.1.0.0 (SONAME libunw.so.1,
/// and that link), unw_fp.o without unwind tables, and unw_prog linked to
/// both. Returns the program and the library file.
fn build(dir: &TempDir) -> (PathBuf, PathBuf) {
    let d = |n: &str| dir.join(n).to_str().unwrap().to_string();
    gcc(&[
        "-O2",
        "-Wall",
        "-fPIC",
        "-shared",
        "-Wl,-soname,libunw.so.1",
        "-o",
        &d("libunw.so.1.0.0"),
        &source("libunw.c"),
    ]);
    std::os::unix::fs::symlink("libunw.so.1.0.0", dir.join("libunw.so.1")).unwrap();
    gcc(&[
        "-O2",
        "-Wall",
        "-c",
        "-fno-asynchronous-unwind-tables",
        "-fno-unwind-tables",
        "-fno-omit-frame-pointer",
        "-o",
        &d("unw_fp.o"),
        &source("unw_fp.c"),
    ]);
    gcc(&[
        "-O2",
        "-g",
        "-Wall",
        "-pthread",
        "-o",
        &d("unw_prog"),
        &source("unw_prog.c"),
        &d("unw_fp.o"),
        &format!("-L{}", dir.path().display()),
        "-l:libunw.so.1",
        "-Wl,-rpath,$ORIGIN",
    ]);
    (dir.join("unw_prog"), dir.join("libunw.so.1.0.0"))
}

/// Function symbols of the program and the library, at their addresses in
/// the target (symbol value + load bias from /proc/PID/maps).
struct Symbols(Vec<(u64, u64, String)>);

impl Symbols {
    fn load(pid: Pid, files: &[&Path]) -> Symbols {
        let maps = maps(pid).unwrap();
        let mut funcs = Vec::new();
        for file in files {
            let real = std::fs::canonicalize(file).unwrap();
            let first = maps
                .iter()
                .find(|m| m.offset == 0 && m.path.as_deref() == real.to_str())
                .unwrap_or_else(|| panic!("{} is not mapped", real.display()));
            let data = std::fs::read(&real).unwrap();
            let elf = object::File::parse(&*data).unwrap();
            let first_load = elf.segments().map(|s| s.address()).min().unwrap() & !0xfff;
            let bias = first.start.get() - first_load;
            for s in elf.symbols() {
                if s.kind() == SymbolKind::Text && s.size() > 0 {
                    let start = bias + s.address();
                    funcs.push((start, start + s.size(), s.name().unwrap().to_string()));
                }
            }
        }
        Symbols(funcs)
    }

    fn name(&self, addr: u64) -> Option<&str> {
        self.0
            .iter()
            .find(|(s, e, _)| *s <= addr && addr < *e)
            .map(|(_, _, n)| n.as_str())
    }

    fn names(&self, stack: &Stack) -> Vec<Option<&str>> {
        stack
            .frames
            .iter()
            .map(|f| self.name(f.lookup_addr()))
            .collect()
    }

    fn show(&self, what: &str, stack: &Stack) -> String {
        let mut s = format!(
            "{what}: complete={} stop_reason={:?}\n",
            stack.complete, stack.stop_reason
        );
        for (i, f) in stack.frames.iter().enumerate() {
            s += &format!(
                "  #{i:<2} {:?} {:#x} slot={:?} sp={:#x} {}\n",
                f.kind,
                f.addr,
                f.slot.map(|a| format!("{a:#x}")),
                f.sp,
                self.name(f.lookup_addr()).unwrap_or("?")
            );
        }
        s
    }
}

/// Every Return frame's slot holds its address, read independently.
fn check_slots(pid: Pid, what: &str, stack: &Stack) {
    for (i, f) in stack.frames.iter().enumerate() {
        match (i, f.kind, f.slot) {
            (0, FrameKind::Ip, None) => {}
            (0, ..) => panic!("{what}: frame 0 is {f:?}"),
            (_, _, None) => panic!("{what}: frame {i} has no slot: {f:?}"),
            (_, _, Some(slot)) => {
                let mut word = [0u8; 8];
                read_mem(pid, RemoteAddr::new(slot), &mut word).unwrap();
                assert_eq!(
                    u64::from_le_bytes(word),
                    f.addr,
                    "{what}: frame {i}'s slot {slot:#x} does not hold its address"
                );
            }
        }
    }
}

/// Position of `seq` as consecutive names in `names`.
fn find_seq(names: &[Option<&str>], seq: &[&str]) -> Option<usize> {
    names
        .windows(seq.len())
        .position(|w| w.iter().zip(seq).all(|(n, s)| *n == Some(*s)))
}

#[test]
fn unwinds_stopped_threads_of_a_real_process() {
    let dir = TempDir::new("unwind");
    let (prog, lib) = build(&dir);
    let target = Target::spawn(Command::new(&prog));
    let ready = target.ready_hex();
    let pid = Pid::new(target.pid);
    let (t1, t2, t3) = (
        Tid::new(ready[0] as i32),
        Tid::new(ready[1] as i32),
        Tid::new(ready[2] as i32),
    );
    let alt = ready[3]..ready[3] + ready[4];
    let main = pid.main_thread();
    // The ready line comes just before pthread_join.
    wait_in_syscall(target.pid, main.get(), SYS_FUTEX);

    let syms = Symbols::load(pid, &[&prog, &lib]);
    let stopped = Stopped::seize_threads(pid, &[main, t1, t2, t3], deadline(5000)).unwrap();
    let regs = |tid: Tid| StartRegs::from(stopped.regs(tid).unwrap());

    let t0 = Instant::now();
    let mut unwinder = Unwinder::new(pid).unwrap();
    let s1 = unwinder.unwind(regs(t1));
    let s2 = unwinder.unwind(regs(t2));
    let s3 = unwinder.unwind(regs(t3));
    let s4 = unwinder.unwind(regs(main));
    let first = t0.elapsed();
    let all = [
        syms.show("thread 1 (read in c)", &s1),
        syms.show("thread 2 (signal handler)", &s2),
        syms.show("thread 3 (frame pointers)", &s3),
        syms.show("main thread (pthread_join)", &s4),
    ]
    .concat();
    eprintln!("{all}");

    // 1: read() in libc, then c, b, a, the thread's function, the thread
    // start (glibc's start_thread and clone3, which ends the stack).
    let n1 = syms.names(&s1);
    let c = find_seq(&n1, &["unw_c", "unw_b", "unw_a", "t1_main"])
        .unwrap_or_else(|| panic!("c, b, a, t1_main not found in order\n{all}"));
    assert!(c >= 1, "{all}");
    assert!(s1.complete, "thread 1 not complete\n{all}");
    assert!(
        s1.frames.len() > c + 4,
        "no thread start after t1_main\n{all}"
    );
    assert_eq!(s1.frames[0].kind, FrameKind::Ip);
    assert!(s1.frames[1..].iter().all(|f| f.kind == FrameKind::Return));
    check_slots(pid, "thread 1", &s1);

    // 2: read() in libc, h, the handler, the restorer (a return address),
    // then the interrupted ip in d, its saved rip in the alt stack's
    // ucontext, then t2_main and the thread start.
    let n2 = syms.names(&s2);
    let h = find_seq(&n2, &["unw_h", "on_signal"])
        .unwrap_or_else(|| panic!("h, on_signal not found\n{all}"));
    let restorer = &s2.frames[h + 2];
    assert_eq!(restorer.kind, FrameKind::Return, "{all}");
    let interrupted = &s2.frames[h + 3];
    assert_eq!(interrupted.kind, FrameKind::Ip, "{all}");
    assert_eq!(n2[h + 3], Some("d"), "{all}");
    let slot = interrupted.slot.unwrap();
    assert!(
        alt.contains(&slot),
        "saved rip {slot:#x} not in the alt stack {alt:x?}\n{all}"
    );
    assert!(alt.contains(&restorer.sp), "{all}");
    assert!(!alt.contains(&interrupted.sp), "{all}");
    assert_eq!(n2[h + 4], Some("t2_main"), "{all}");
    assert!(s2.complete, "thread 2 not complete\n{all}");
    check_slots(pid, "thread 2", &s2);

    // 3: the function without unwind tables, and its caller.
    let n3 = syms.names(&s3);
    assert_eq!(n3[0], Some("unw_fp_spin"), "{all}");
    assert_eq!(n3[1], Some("fp_caller"), "{all}");
    assert_eq!(n3[2], Some("t3_main"), "{all}");
    assert!(s3.complete, "thread 3 not complete\n{all}");
    check_slots(pid, "thread 3", &s3);

    // 4: pthread_join in libc, main, libc's start, _start.
    let n4 = syms.names(&s4);
    assert!(n4.contains(&Some("main")), "{all}");
    assert_eq!(n4.last(), Some(&Some("_start")), "{all}");
    assert!(s4.complete, "main thread not complete\n{all}");
    check_slots(pid, "main thread", &s4);

    // Once the modules are loaded, an unwind costs a few reads of the stack.
    let start = regs(t1);
    let mut times: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            let s = unwinder.unwind(start);
            let d = t.elapsed();
            assert_eq!(s, s1);
            d
        })
        .collect();
    times.sort();
    let signal_start = regs(t2);
    let mut signal_times: Vec<Duration> = (0..200)
        .map(|_| {
            let t = Instant::now();
            unwinder.unwind(signal_start);
            t.elapsed()
        })
        .collect();
    signal_times.sort();
    eprintln!(
        "unwind: maps read and modules loaded with the first unwinds of 4 threads in {first:?}; \
         median unwind of thread 1 ({} frames): {:?}; of thread 2 ({} frames, a signal frame): {:?}",
        s1.frames.len(),
        times[times.len() / 2],
        s2.frames.len(),
        signal_times[signal_times.len() / 2],
    );
    stopped.release().unwrap();
}

/// An unwinder built for a process that is gone fails; one whose thread's
/// stack cannot be read says why instead of failing.
#[test]
fn unreadable_stack_is_reported_not_complete() {
    let dir = TempDir::new("unwind-bad");
    let (prog, _) = build(&dir);
    let target = Target::spawn(Command::new(&prog));
    let pid = Pid::new(target.pid);
    let mut unwinder = Unwinder::new(pid).unwrap();
    let ready = target.ready_hex();
    let stopped =
        Stopped::seize_threads(pid, &[Tid::new(ready[0] as i32)], deadline(5000)).unwrap();
    let r = StartRegs::from(stopped.regs(Tid::new(ready[0] as i32)).unwrap());
    // A stack pointer in unmapped memory: nothing to read.
    let s = unwinder.unwind(StartRegs { sp: 8, bp: 8, ..r });
    assert!(!s.complete, "{s:?}");
    assert_eq!(s.frames.len(), 1, "{s:?}");
    assert!(s.stop_reason.is_some(), "{s:?}");
    // An ip outside any code.
    let s = unwinder.unwind(StartRegs { ip: 16, bp: 8, ..r });
    assert!(!s.complete, "{s:?}");
    assert!(s.stop_reason.is_some(), "{s:?}");
    stopped.release().unwrap();
    drop(target);
    assert!(Unwinder::new(Pid::new(i32::MAX)).is_err());
}

/// A thread inside the vDSO (clock_gettime): its unwind information is read
/// from the target's memory.
#[test]
fn unwinds_from_the_vdso() {
    let dir = TempDir::new("unwind-vdso");
    let prog = dir.join("unw_vdso");
    gcc(&[
        "-O2",
        "-Wall",
        "-o",
        prog.to_str().unwrap(),
        &source("unw_vdso.c"),
    ]);
    let target = Target::spawn(Command::new(&prog));
    let pid = Pid::new(target.pid);
    let vdso = maps(pid)
        .unwrap()
        .into_iter()
        .find(|m| m.path.as_deref() == Some("[vdso]"))
        .expect("no [vdso] mapping");
    let syms = Symbols::load(pid, &[&prog]);
    let mut unwinder = Unwinder::new(pid).unwrap();
    let mut seen = Vec::new();
    // The loop spends most of its time in the vDSO; stop it until it is
    // caught there (each try is bounded).
    for _ in 0..500 {
        let stopped = Stopped::seize_threads(pid, &[pid.main_thread()], deadline(5000)).unwrap();
        let regs = StartRegs::from(stopped.regs(pid.main_thread()).unwrap());
        let stack = unwinder.unwind(regs);
        stopped.release().unwrap();
        let shown = syms.show("main thread", &stack);
        assert!(stack.complete, "{shown}");
        if vdso.contains(RemoteAddr::new(regs.ip)) {
            let names = syms.names(&stack);
            // The vDSO, libc's clock_gettime, then the program.
            assert!(
                find_seq(&names, &["spin_clock", "main"]).is_some_and(|i| i <= 3),
                "{shown}"
            );
            check_slots(pid, "main thread", &stack);
            eprintln!("{shown}");
            return;
        }
        seen.push(regs.ip);
    }
    panic!("never stopped inside the vDSO {vdso:?}: ips {seen:x?}");
}

/// A stack deeper than [`MAX_FRAMES`] is cut there, not complete.
#[test]
fn stops_after_the_frame_limit() {
    let dir = TempDir::new("unwind-deep");
    let prog = dir.join("unw_deep");
    gcc(&[
        "-O2",
        "-Wall",
        "-o",
        prog.to_str().unwrap(),
        &source("unw_deep.c"),
    ]);
    let target = Target::spawn(Command::new(&prog));
    let pid = Pid::new(target.pid);
    wait_in_syscall(target.pid, target.pid, 0);
    let syms = Symbols::load(pid, &[&prog]);
    let stopped = Stopped::seize_threads(pid, &[pid.main_thread()], deadline(5000)).unwrap();
    let regs = StartRegs::from(stopped.regs(pid.main_thread()).unwrap());
    let stack = Unwinder::new(pid).unwrap().unwind(regs);
    stopped.release().unwrap();
    assert!(!stack.complete);
    assert_eq!(stack.frames.len(), MAX_FRAMES);
    let reason = stack.stop_reason.as_deref().unwrap();
    assert!(reason.contains("more than 1024 frames"), "{reason}");
    let names = syms.names(&stack);
    assert!(
        names[2..].iter().all(|n| *n == Some("deep")),
        "{}",
        syms.show("deep", &stack)
    );
    check_slots(pid, "deep", &stack);
}

/// A library replaced on disk after it was mapped (as a package upgrade
/// does) is read through /proc/PID/map_files: the old file's CFI.
#[test]
fn unwinds_through_a_replaced_library() {
    let dir = TempDir::new("unwind-replaced");
    let (prog, lib) = build(&dir);
    let target = Target::spawn(Command::new(&prog));
    let ready = target.ready_hex();
    let pid = Pid::new(target.pid);
    let t1 = Tid::new(ready[0] as i32);
    let syms = Symbols::load(pid, &[&prog, &lib]);
    // A new file (another inode) in the old one's place.
    let new = dir.join("libunw.so.1.0.0.new");
    std::fs::copy(&lib, &new).unwrap();
    std::fs::rename(&new, &lib).unwrap();
    let deleted = format!("{} (deleted)", lib.display());
    assert!(
        maps(pid)
            .unwrap()
            .iter()
            .any(|m| m.path.as_deref() == Some(&deleted)),
        "the library is not shown as deleted"
    );
    let stopped = Stopped::seize_threads(pid, &[t1], deadline(5000)).unwrap();
    let regs = StartRegs::from(stopped.regs(t1).unwrap());
    let stack = Unwinder::new(pid).unwrap().unwind(regs);
    stopped.release().unwrap();
    let shown = syms.show("thread 1", &stack);
    assert!(stack.complete, "{shown}");
    let names = syms.names(&stack);
    assert!(
        find_seq(&names, &["unw_c", "unw_b", "unw_a", "t1_main"]).is_some(),
        "{shown}"
    );
    check_slots(pid, "thread 1", &stack);
}

/// The main thread inside a library's constructor, which the dynamic
/// loader runs before the program's `_start` (ulp-fixtures'
/// slow_init_prog, waiting in read()): its stack starts in the loader's
/// entry code, which has no unwind information, and ends there whole.
#[test]
fn a_constructor_run_by_the_loader_is_a_whole_stack() {
    const SYS_READ: i64 = 0;
    let dir = TempDir::new("unwind-ctor");
    ulp_fixtures::copy_files(
        &ulp_fixtures::fixtures_dir(),
        dir.path(),
        &["libulpdemo.so.1", "libslowinit.so.1", "slow_init_prog"],
    );
    let mut cmd = Command::new(dir.join("slow_init_prog"));
    cmd.env_remove("LD_PRELOAD");
    let target = Target::spawn(cmd);
    assert!(target.ready_line().ends_with(" constructor"));
    let pid = Pid::new(target.pid);
    let main = pid.main_thread();
    wait_in_syscall(target.pid, main.get(), SYS_READ);
    let lib = std::fs::canonicalize(dir.join("libslowinit.so.1")).unwrap();
    let syms = Symbols::load(pid, &[&lib]);
    let stopped = Stopped::seize_threads(pid, &[main], deadline(5000)).unwrap();
    let mut unwinder = Unwinder::new(pid).unwrap();
    let stack = unwinder.unwind(StartRegs::from(stopped.regs(main).unwrap()));
    let shown = syms.show("main thread in a constructor", &stack);
    eprintln!("{shown}");
    let names = syms.names(&stack);
    let ctor = names
        .iter()
        .position(|n| *n == Some("slow_init"))
        .unwrap_or_else(|| panic!("no slow_init frame\n{shown}"));
    assert!(stack.complete, "{shown}");
    // Below the constructor only the loader: its _dl_init, and last the
    // return into its entry code.
    let loader: Vec<(u64, u64)> = maps(pid)
        .unwrap()
        .iter()
        .filter(|m| {
            m.is_executable()
                && m.path
                    .as_deref()
                    .is_some_and(|p| p.rsplit('/').next().unwrap().starts_with("ld-linux"))
        })
        .map(|m| (m.start.get(), m.end.get()))
        .collect();
    for f in &stack.frames[ctor + 1..] {
        assert!(
            loader
                .iter()
                .any(|(s, e)| (*s..*e).contains(&f.lookup_addr())),
            "{f:?} is not in the loader\n{shown}"
        );
    }
    assert!(stack.frames.len() > ctor + 1, "{shown}");
    check_slots(pid, "main thread in a constructor", &stack);
    stopped.release().unwrap();
}

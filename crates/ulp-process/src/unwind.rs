//! Unwinding the stack of a stopped thread of another process: the code
//! address of each frame, and where each return address is stored (the
//! word a `ret` will pop), so that a caller can tell which functions a
//! thread is in and swap a return address.
//!
//! The CFI (`.eh_frame`, `.eh_frame_hdr`, `.debug_frame` when there is no
//! `.eh_frame`) is interpreted by framehop; this module feeds it: one
//! framehop module per file-backed executable mapping (and the vDSO), its
//! sections read the first time an address in it is unwound, and the
//! target's stack read a few pages per system call. Where no unwind
//! information covers an address, framehop walks frame pointers; a thread
//! stopped inside a function without unwind information (frame 0) is
//! unwound through its frame pointer when framehop's guess gives no code
//! address. Signal frames (glibc's `__restore_rt`, which framehop does not
//! know) are crossed here: the interrupted `rip`, `rsp`, `rbp` are read from
//! the `ucontext_t` of the `rt_sigframe`.
//!
//! The map of the target is read once, by [`Unwinder::new`]: build one
//! per process per operation, while its threads are stopped.

mod memory;
mod modules;

use std::collections::HashMap;

use framehop::x86_64::{CacheX86_64, UnwindRegsX86_64, UnwinderX86_64};
use framehop::{FrameAddress, Module, Unwinder as _};

use crate::error::Error;
use crate::{maps, Pid, Regs, Tid};
use memory::{RestorerCache, StackMem, RESTORE_RT};
use modules::{Bytes, CodeMap, Loaded, ObjectUnwind, Source};

/// At most this many frames are followed; a deeper stack is not complete.
pub const MAX_FRAMES: usize = 1024;

/// Offset of `uc_mcontext.gregs` in `ucontext_t`: the layout the remote
/// call's frame writes too.
const UC_GREGS: u64 = crate::frame::UC_MCONTEXT;
/// Indices in `gregs` (`REG_RBP`, `REG_RSP`, `REG_RIP` of `<sys/ucontext.h>`).
const REG_RBP: u64 = 10;
const REG_RSP: u64 = 15;
const REG_RIP: u64 = 16;

/// The registers an unwind starts from: those of a stopped thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StartRegs {
    pub ip: u64,
    pub sp: u64,
    pub bp: u64,
}

impl From<&Regs> for StartRegs {
    fn from(r: &Regs) -> StartRegs {
        StartRegs {
            ip: r.rip(),
            sp: r.rsp(),
            bp: r.rbp(),
        }
    }
}

impl From<Regs> for StartRegs {
    fn from(r: Regs) -> StartRegs {
        StartRegs::from(&r)
    }
}

/// What a frame's address is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// An instruction pointer: the thread's (frame 0) or the one a signal
    /// interrupted. The instruction at it has not run yet: look it up as is.
    Ip,
    /// A return address: the call instruction is just before it (look up
    /// `addr - 1`).
    Return,
}

/// One frame of a thread's stack, innermost first.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame {
    /// Frame 0: the thread's ip (kind Ip). After a signal frame: the
    /// interrupted ip (kind Ip: look it up as is). Otherwise a return
    /// address (kind Return: the call instruction is before it; look up
    /// `addr - 1`).
    pub addr: u64,
    pub kind: FrameKind,
    /// Where `addr` is stored in the target's memory: for a return address,
    /// its slot on the stack (the word a `ret` will pop, CFA - 8, checked to
    /// hold `addr`); for the ip interrupted by a signal, the address of the
    /// saved rip in the `ucontext_t` of the signal frame; `None` for frame 0.
    pub slot: Option<u64>,
    /// The stack pointer in this frame (for a return address: once the
    /// callee has returned to it).
    pub sp: u64,
}

impl Frame {
    /// The address to look the frame's function up by: `addr` for an ip,
    /// `addr - 1` (inside the call instruction) for a return address.
    pub fn lookup_addr(&self) -> u64 {
        match self.kind {
            FrameKind::Ip => self.addr,
            FrameKind::Return => self.addr.wrapping_sub(1),
        }
    }
}

/// The frames of one thread's stack.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stack {
    /// Innermost first; frame 0 is the thread's ip.
    pub frames: Vec<Frame>,
    /// The unwind reached the outermost frame: framehop said there is no
    /// caller (return address undefined, as `_start` and glibc's
    /// clone/clone3 thread start mark it, or a return address of 0).
    pub complete: bool,
    /// Why not complete (no unwind info and no plausible frame pointer,
    /// unreadable memory, stack pointer not increasing, more than
    /// [`MAX_FRAMES`] frames, a return address that its slot does not
    /// hold, ...).
    pub stop_reason: Option<String>,
}

/// The objects read so far in this tool run, by device and inode.
static READ: crate::PerFile<ObjectUnwind> = crate::PerFile::new();

/// Unwinds stopped threads of one process; built once per process per
/// operation, caches what it parsed.
pub struct Unwinder {
    pid: Pid,
    /// The executable mappings, in address order.
    code: Vec<CodeMap>,
    framehop: UnwinderX86_64<Bytes>,
    /// What was read of each file (by device and inode), for its other
    /// executable mappings.
    objects: HashMap<(crate::MapsField, u64), Result<ObjectUnwind, String>>,
    cache: CacheX86_64,
    restorers: RestorerCache,
}

impl Unwinder {
    /// Reads /proc/PID/maps: one framehop module per file-backed
    /// executable mapping (and the vDSO), its `.eh_frame` / `.eh_frame_hdr`
    /// (or `.debug_frame`) read from the file (through
    /// /proc/PID/map_files/START-END when readable, else the path) the first
    /// time an address in it is unwound.
    pub fn new(pid: Pid) -> Result<Unwinder, Error> {
        Ok(Unwinder::with_maps(pid, &maps(pid)?))
    }

    /// [`Unwinder::new`] from the process's maps, read by the caller.
    pub fn with_maps(pid: Pid, maps: &[crate::Mapping]) -> Unwinder {
        let code = maps.iter().filter_map(CodeMap::from_mapping).collect();
        Unwinder {
            pid,
            code,
            framehop: UnwinderX86_64::new(),
            objects: HashMap::new(),
            cache: CacheX86_64::new(),
            restorers: RestorerCache::default(),
        }
    }

    /// Reads the unwind information of every executable mapping now, so
    /// that no later [`Unwinder::unwind`] reads a file while the thread
    /// it unwinds is held.
    pub fn load_all(&mut self) {
        let starts: Vec<u64> = self.code.iter().map(|m| m.start).collect();
        for a in starts {
            self.load_module_for(a);
        }
    }

    /// Gives framehop every module this tool run has read already (a
    /// fleet maps the same files: after its first process, all of them).
    /// True when no file is left to read. (The vDSO is left to the unwind
    /// that meets it: a thread is there only while it runs a clock read,
    /// never while it waits in the kernel.)
    pub fn load_known(&mut self) -> bool {
        let mut all = true;
        for i in 0..self.code.len() {
            let m = &self.code[i];
            let Some((dev, inode)) = m.file_key() else {
                continue;
            };
            if READ.get(dev, inode).is_some() {
                let start = m.start;
                self.load_module_for(start);
            } else {
                all = false;
            }
        }
        all
    }

    /// Reads the unwind information of the files that thread `tid`'s
    /// stack runs through now, without stopping it: it must be blocked (in
    /// a system call, as a thread that waits is), and its stack is unwound
    /// from where /proc says it stands. The stack of a thread that stays
    /// blocked does not change, so that a later [`Unwinder::unwind`] of it
    /// reads no file (one that has moved on meanwhile is unwound all the
    /// same, reading what it needs then). False when the thread runs or
    /// /proc does not say where it stands: nothing was read.
    pub fn load_for_blocked(&mut self, tid: Tid) -> bool {
        let Some((sp, ip)) = crate::procfs::blocked_at(self.pid, tid) else {
            return false;
        };
        // No frame pointer is known here: the call frame information
        // carries the unwind (what it cannot reach is read when needed).
        self.unwind(StartRegs { ip, sp, bp: 0 });
        true
    }

    /// The process this unwinds.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// Unwinds from these registers of a thread that is stopped. Never
    /// fails: an unwind that cannot go on returns what it found with
    /// `complete = false` and the reason.
    pub fn unwind(&mut self, regs: StartRegs) -> Stack {
        let mut mem = StackMem::new(self.pid);
        let mut frames = vec![Frame {
            addr: regs.ip,
            kind: FrameKind::Ip,
            slot: None,
            sp: regs.sp,
        }];
        let mut uregs = UnwindRegsX86_64::new(regs.ip, regs.sp, regs.bp);
        let mut at = FrameAddress::from_instruction_pointer(regs.ip);
        let stop_reason = loop {
            if let Some(uc) = self.signal_frame(at, uregs.sp()) {
                let greg = |mem: &mut StackMem, i: u64| mem.read_u64(uc + UC_GREGS + 8 * i);
                let (Ok(ip), Ok(sp), Ok(bp)) = (
                    greg(&mut mem, REG_RIP),
                    greg(&mut mem, REG_RSP),
                    greg(&mut mem, REG_RBP),
                ) else {
                    break Some(format!(
                        "cannot read the registers saved by a signal frame at {uc:#x}"
                    ));
                };
                if !self.is_code(ip) {
                    break Some(format!(
                        "the signal frame at {uc:#x} holds an ip {ip:#x} that is not in \
                         executable memory"
                    ));
                }
                if frames.len() == MAX_FRAMES {
                    break Some(format!("more than {MAX_FRAMES} frames"));
                }
                frames.push(Frame {
                    addr: ip,
                    kind: FrameKind::Ip,
                    slot: Some(uc + UC_GREGS + 8 * REG_RIP),
                    sp,
                });
                uregs = UnwindRegsX86_64::new(ip, sp, bp);
                at = FrameAddress::from_instruction_pointer(ip);
                continue;
            }
            self.load_module_for(at.address_for_lookup());
            let before = uregs;
            // The last word framehop read: a return address of 0 ends the
            // stack for framehop, and reads as such.
            let mut last_read = None;
            let result = self
                .framehop
                .unwind_frame(at, &mut uregs, &mut self.cache, &mut |a| {
                    let v = mem.read_u64(a);
                    last_read = v.ok();
                    v
                });
            let is_ip = !at.is_return_address();
            let ra = match result {
                // framehop's guess for an ip outside any CFI is "at function
                // entry", and the word at sp then is often a saved rbp of 0
                // (the thread start clears rbp): try the frame pointer.
                Ok(None) | Ok(Some(0)) if is_ip && last_read == Some(0) => {
                    match self.frame_pointer_step(is_ip, before, &mut mem) {
                        Some(r) => {
                            uregs = r;
                            r.ip()
                        }
                        None => break None,
                    }
                }
                Ok(None) | Ok(Some(0)) => break None,
                Ok(Some(ra)) if self.is_code(ra) => ra,
                Ok(Some(ra)) => {
                    // framehop's guess for an ip outside any CFI is "at
                    // function entry": the frame pointer is the other.
                    match self.frame_pointer_step(is_ip, before, &mut mem) {
                        Some(r) => {
                            uregs = r;
                            r.ip()
                        }
                        None => {
                            break Some(format!(
                                "return address {ra:#x} of the frame at {:#x} ({}) is not in \
                                 executable memory",
                                at.address(),
                                self.describe(at.address_for_lookup()),
                            ))
                        }
                    }
                }
                // The loader's entry code has no unwind information: a
                // return into it ends the first thread's stack.
                Err(_) if !is_ip && self.starts_stack(at.address_for_lookup()) => break None,
                Err(e) => match self.frame_pointer_step(is_ip, before, &mut mem) {
                    Some(r) => {
                        uregs = r;
                        r.ip()
                    }
                    None => {
                        break Some(format!(
                            "cannot unwind the frame at {:#x} ({}): {e}",
                            at.address(),
                            self.describe(at.address_for_lookup()),
                        ))
                    }
                },
            };
            let sp = uregs.sp();
            if sp <= before.sp() {
                break Some(format!(
                    "the stack pointer did not increase ({:#x} to {sp:#x}) unwinding the frame \
                     at {:#x} ({})",
                    before.sp(),
                    at.address(),
                    self.describe(at.address_for_lookup()),
                ));
            }
            let slot = sp - 8;
            match mem.read_u64(slot) {
                Ok(v) if v == ra => {}
                held => {
                    break Some(format!(
                        "return address {ra:#x} of the frame at {:#x} ({}) is not in its slot \
                         {slot:#x} (which holds {})",
                        at.address(),
                        self.describe(at.address_for_lookup()),
                        match held {
                            Ok(v) => format!("{v:#x}"),
                            Err(()) => "nothing readable".into(),
                        }
                    ))
                }
            }
            if frames.len() == MAX_FRAMES {
                break Some(format!("more than {MAX_FRAMES} frames"));
            }
            frames.push(Frame {
                addr: ra,
                kind: FrameKind::Return,
                slot: Some(slot),
                sp,
            });
            at = match FrameAddress::from_return_address(ra) {
                Some(a) => a,
                None => break None,
            };
        };
        Stack {
            frames,
            complete: stop_reason.is_none(),
            stop_reason,
        }
    }

    /// For a frame at glibc's signal restorer: the address of the
    /// `ucontext_t` the kernel saved the interrupted registers in. A
    /// handler's return address is the restorer's first byte, and `sp` then
    /// points just past it, at the `ucontext_t`; so it does for a thread
    /// stopped inside the restorer (its two instructions leave `rsp` as
    /// it is).
    fn signal_frame(&mut self, at: FrameAddress, sp: u64) -> Option<u64> {
        if !self.is_code(at.address()) {
            return None;
        }
        let found = match at {
            FrameAddress::ReturnAddress(a) => self.is_restorer(a.get()),
            FrameAddress::InstructionPointer(ip) => [0u64, 7, RESTORE_RT.len() as u64]
                .iter()
                .any(|&back| ip >= back && self.is_restorer(ip - back)),
        };
        found.then_some(sp)
    }

    /// Whether the code at `addr` is the signal restorer: read from the
    /// file the mapping maps when it was read for its unwind information
    /// (no system call; the restorer is never patched), else from the
    /// process's memory. Once per address.
    fn is_restorer(&mut self, addr: u64) -> bool {
        let from_file = self.code_index(addr).and_then(|i| {
            let m = &self.code[i];
            let object = self.objects.get(&m.file_key()?)?.as_ref().ok()?;
            object.file_bytes(addr - m.start + m.offset, RESTORE_RT.len())
        });
        let pid = self.pid;
        self.restorers.is_restorer(addr, |code| match from_file {
            Some(bytes) => {
                code.copy_from_slice(bytes);
                true
            }
            None => crate::read_mem(pid, crate::RemoteAddr::new(addr), code).is_ok(),
        })
    }

    /// Whether a return address (at lookup address `addr`) is in the
    /// dynamic loader's entry code ([`ObjectUnwind::in_entry_code`]): the
    /// kernel starts a process's first thread there, and the loader calls
    /// the constructors of the libraries the program needs from there
    /// before it jumps to the program's `_start`. Nothing calls that code,
    /// so the stack is whole. Only the loader's (by its name, as in
    /// /proc/PID/maps): in other objects, code past the entry point
    /// without unwind information may be a function that is called.
    fn starts_stack(&self, addr: u64) -> bool {
        let Some(i) = self.code_index(addr) else {
            return false;
        };
        let m = &self.code[i];
        let Source::File { path, .. } = &m.source else {
            return false;
        };
        let base = path.rsplit('/').next().unwrap_or(path);
        if !crate::is_loader_name(base) {
            return false;
        }
        let Some(Ok(object)) = m.file_key().and_then(|k| self.objects.get(&k)) else {
            return false;
        };
        let Ok(bias) = object.bias(m) else {
            return false;
        };
        object.in_entry_code(addr.wrapping_sub(bias)) == Some(true)
    }

    /// One step through the frame pointer, for frame 0 (or an ip a signal
    /// interrupted) when framehop's answer is an error, a return address
    /// of 0 read off the stack, or no code address (its guess for an ip no
    /// CFI covers is "at the function's entry"): `rbp` points at the saved
    /// `rbp`, the return address above it.
    fn frame_pointer_step(
        &self,
        is_ip: bool,
        regs: UnwindRegsX86_64,
        mem: &mut StackMem,
    ) -> Option<UnwindRegsX86_64> {
        let (sp, bp) = (regs.sp(), regs.bp());
        if !is_ip || bp < sp || bp % 8 != 0 {
            return None;
        }
        let ra = mem.read_u64(bp.checked_add(8)?).ok()?;
        let caller_bp = mem.read_u64(bp).ok()?;
        if !self.is_code(ra) {
            return None;
        }
        Some(UnwindRegsX86_64::new(ra, bp + 16, caller_bp))
    }

    /// Whether `addr` is in an object whose unwind information was read:
    /// an unwind step there follows that information (or, for a function
    /// it does not cover, the frame pointer of compiled code). Code in
    /// anonymous memory (JIT, trampolines, stubs) or in a file without
    /// unwind information is not: a step there is a frame-pointer guess,
    /// which code that keeps no frame pointer makes wrong.
    pub fn covered(&mut self, addr: u64) -> bool {
        self.load_module_for(addr);
        self.code_index(addr)
            .is_some_and(|i| matches!(self.code[i].loaded, Loaded::Yes))
    }

    fn code_index(&self, addr: u64) -> Option<usize> {
        let i = self.code.partition_point(|m| m.start <= addr);
        (i > 0 && addr < self.code[i - 1].end).then(|| i - 1)
    }

    /// Whether `addr` is in an executable mapping.
    fn is_code(&self, addr: u64) -> bool {
        self.code_index(addr).is_some()
    }

    /// Where `addr` is, for messages.
    fn describe(&self, addr: u64) -> String {
        match self.code_index(addr) {
            None => "not in executable memory".into(),
            Some(i) => {
                let m = &self.code[i];
                match &m.loaded {
                    Loaded::Failed(why) => format!("{}; its unwind info: {why}", m.name()),
                    _ => m.name(),
                }
            }
        }
    }

    /// Gives framehop the module of the mapping holding `addr`, the first
    /// time an address in it is unwound.
    fn load_module_for(&mut self, addr: u64) {
        let Some(i) = self.code_index(addr) else {
            return;
        };
        let m = &mut self.code[i];
        if !matches!(m.loaded, Loaded::NotYet) {
            return;
        }
        if matches!(m.source, Source::Anonymous) {
            m.loaded = Loaded::Failed("anonymous memory has no unwind information".into());
            return;
        }
        let key = m.file_key();
        let object = match key.as_ref().and_then(|k| self.objects.get(k)) {
            Some(read) => read.clone(),
            None => {
                // Read once per tool run: another process of a fleet maps
                // the same files (a file is its device and inode; a failed
                // read is tried again by the next process).
                let shared = key.and_then(|(dev, inode)| READ.get(dev, inode));
                let read = match shared {
                    Some(o) => Ok(o),
                    None => m.read_object(self.pid),
                };
                if let Some(k) = key {
                    if let Ok(o) = &read {
                        READ.put(k.0, k.1, o.clone());
                    }
                    self.objects.insert(k, read.clone());
                }
                read
            }
        };
        match object.and_then(|o| Ok((o.bias(m)?, o.sections))) {
            Ok((bias, sections)) => {
                self.framehop
                    .add_module(Module::new(m.name(), m.start..m.end, bias, sections));
                m.loaded = Loaded::Yes;
            }
            Err(why) => m.loaded = Loaded::Failed(why),
        }
    }
}

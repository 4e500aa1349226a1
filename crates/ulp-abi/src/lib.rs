//! The one interface shared by the `ulp` tool and the runtime
//! (`libpulp.so.0`) that lives inside patched processes.
//!
//! The runtime exports two symbols for the tool (and `dlopen`, interposed
//! for the patch store):
//!
//! * [`INTERFACE_SYMBOL`]: a static [`Interface`] block. The tool reads it
//!   (and writes its request area) through process memory; it never needs to
//!   stop the process to read the registry or the message ring.
//! * [`ENTRY_SYMBOL`]: `extern "C" fn() -> i32`, the only function the tool
//!   calls remotely. It performs the operation in `Interface::req_op` on the
//!   request bytes and fills the result area.
//!
//! Ownership of each area, and when it may change:
//!
//! * request (`req_*`): written by the tool while it holds the thread that
//!   will make the call (a second tool cannot seize that thread, which
//!   serialises tools), read by the runtime during the call.
//! * result (`res_*`): written by the runtime during a call, read by the tool
//!   after the call returns.
//! * registry (`reg_*`): rewritten by the runtime during a call, read by the
//!   tool at any time under the seqlock `reg_generation` (odd while changing).
//! * ring (`ring_*`): appended to by the runtime, read by the tool at any time.
//! * return path (`resume`, `resume_end`) and `entry`: written once by the
//!   constructor (before `magic`), read by the tool.
//! * `call_done`: written by the resume routine at the end of a remote call
//!   (see [`Interface::call_done`]), polled by the tool.
//!
//! Bump [`PROTOCOL_VERSION`] whenever a layout or meaning here changes; the
//! tool refuses a runtime whose version it does not know. Offsets are checked
//! at compile time below so both sides agree without sharing a compiler run.

#![no_std]

extern crate alloc;

pub mod elf;
pub mod errors;
pub mod format;
pub mod hex;
pub mod le;
pub mod names;
pub mod time;
pub mod transition;

/// The patch store's place and file names, shared by the tool (which
/// records) and the runtime (which applies the records at start).
pub mod store {
    /// Where records go when neither `--store` nor `ULP_STORE` says.
    pub const DEFAULT_DIR: &str = "/var/lib/ulp/patches";
    /// The environment variable that names the store.
    pub const ENV: &str = "ULP_STORE";
    /// The metadata file of a record.
    pub const METADATA: &str = "record.json";
    /// The record format's version (the `format` field).
    pub const FORMAT: u64 = 1;
    /// [`DEFAULT_DIR`] and [`ENV`] for C (the runtime reads them before it
    /// may allocate).
    pub const DEFAULT_DIR_C: &core::ffi::CStr = c"/var/lib/ulp/patches";
    pub const ENV_C: &core::ffi::CStr = c"ULP_STORE";
}

#[cfg(feature = "optout")]
pub mod optout;

/// `b"ULPRTIF1"` read as a little-endian `u64`.
pub const MAGIC: u64 = u64::from_le_bytes(*b"ULPRTIF1");
pub const PROTOCOL_VERSION: u32 = 12;
/// The oldest runtime protocol this ulp also works with, so that an
/// upgraded ulp can still patch the processes that run the runtime it
/// replaced. A layout change that only appends fields keeps the versions
/// before it readable: 11's block is 12's without [`Interface::got_moved`],
/// which the tool then neither reads nor writes ([`GOT_MOVED_SINCE`]).
pub const OLDEST_PROTOCOL_READ: u32 = 11;
/// The first protocol with [`Interface::got_moved`].
pub const GOT_MOVED_SINCE: u32 = 12;
const _: () = assert!(
    OLDEST_PROTOCOL_READ <= GOT_MOVED_SINCE && GOT_MOVED_SINCE <= PROTOCOL_VERSION,
    "the protocols read must be a range that ends with this one"
);

pub const INTERFACE_SYMBOL: &str = "__ulp_interface";
pub const ENTRY_SYMBOL: &str = "__ulp_entry";

/// Size of the request area.
pub const REQUEST_MAX: usize = 64 * 1024;
/// Most byte writes one operation may ask the tool to make.
pub const MAX_WRITES: usize = 1024;
/// Size of the result message (NUL-terminated).
pub const RESULT_MSG_MAX: usize = 512;
/// Size of the message ring.
pub const RING_SIZE: usize = 16 * 1024;

/// Operations, stored in `Interface::req_op`.
pub mod op {
    /// Request: [`crate::ApplyRequest`]. Loads the container, resolves its
    /// functions and references, records the patch, returns the writes.
    pub const APPLY: u32 = 1;
    /// Request: 32-byte patch id. Removes the patch from the registry and
    /// returns the writes that point each entry at the newest remaining
    /// patch or restore it.
    pub const REVERT: u32 = 2;
    /// No request. Undoes the registry change of the last APPLY, REVERT,
    /// REVERT_ALL or REPLACE, for when the tool could not make the writes.
    /// Returns no writes.
    pub const UNDO: u32 = 3;
    /// Request: a library, as a basename (`libfoo.so.1`) or as the path the
    /// process loaded it from (it contains a `/`). Removes every applied
    /// patch of that library and returns the writes that restore the
    /// entries (or re-point them at a remaining patch of another library
    /// that also redirects them). `NOT_APPLIED` when there is none.
    pub const REVERT_ALL: u32 = 4;
    /// Request: [`crate::ReplaceRequest`]. One plan: removes every patch of
    /// the library (as in REVERT_ALL) and applies the new container (as in
    /// APPLY), returning the writes that take each entry straight from its
    /// old state to its new one, so the tool makes them in one stop and no
    /// thread ever sees neither patch. All or nothing: a refusal of the new
    /// patch removes nothing. If the new patch is already applied it stays
    /// (the others are removed); `ALREADY_APPLIED` when it is applied and
    /// nothing else is to be removed.
    pub const REPLACE: u32 = 5;
    /// No request. In a debug build of the runtime only (the tests'):
    /// panics, so the tests see what a panic does in a process (a
    /// refusal, live patching off, the process running). A release build
    /// answers it as an unknown operation.
    pub const TEST_PANIC: u32 = 0x7e57;
}

/// Result codes of the entry point (also stored in `Interface::res_code`).
///
/// Codes below 256 are the ones here. A refusal that is one of libpulp's
/// errors ([`crate::errors`]: a container dlopen cannot load, a function
/// not found or not patchable, bad metadata) has that error's number as
/// its code ([`of_error`], 256 and up, since protocol 7), so the tool
/// reports libpulp's phrase and exits with its exit code; `res_msg` holds
/// the detail (for a dlopen failure, `dlerror()`'s text).
pub mod code {
    use crate::errors::{self, UlpError};

    pub const OK: i32 = 0;
    /// The patch id is already in the registry.
    pub const ALREADY_APPLIED: i32 = 1;
    /// REVERT of a patch id that is not in the registry.
    pub const NOT_APPLIED: i32 = 2;
    /// The target library is not loaded in this process.
    pub const TARGET_NOT_LOADED: i32 = 3;
    /// The loaded target's build-id differs from the patch's.
    pub const BUILD_ID_MISMATCH: i32 = 4;
    /// Live patching is disabled in this process.
    pub const DISABLED: i32 = 5;
    /// Any other failure; `res_msg` says what.
    pub const FAILED: i32 = 6;
    /// The request could not be decoded.
    pub const BAD_REQUEST: i32 = 7;
    /// UNDO with nothing to undo.
    pub const NOTHING_TO_UNDO: i32 = 8;

    /// The code of a refusal for libpulp's error `e`.
    pub const fn of_error(e: UlpError) -> i32 {
        e.number as i32
    }

    /// The libpulp error a code stands for, when it is one ([`of_error`]).
    pub fn error(code: i32) -> Option<UlpError> {
        u16::try_from(code)
            .ok()
            .filter(|&n| n >= 256)
            .and_then(errors::by_number)
    }
}

/// Values of `Interface::state`.
pub mod state {
    pub const ENABLED: u32 = 0;
    /// A `LIBPULP_DISABLE_ON_*` setting matched at start.
    pub const DISABLED_BY_USER: u32 = 1;
    /// Switched off by `ulp set_patchable disable` (the tool writes this
    /// field directly; the runtime only reads it).
    pub const DISABLED_BY_TOOL: u32 = 2;
    /// Switched off by the runtime itself after an internal error (a
    /// panic, logged in its ring): the operation it interrupted may be half
    /// done, so nothing more is applied in this process (protocol 8).
    pub const DISABLED_BY_ERROR: u32 = 3;
}

/// `Write::kind`: what a write changes, which tells the tool how to check
/// and make it. The tool makes the writes in the order the runtime gives
/// them: that order is part of the plan (every STUB before the ENTRY that
/// leads to it; for a function without padding, its CODE before its
/// REWRITE; for a change of several functions, ARCHITECTURE.md "Switching
/// several functions at once": the guarded slots [CODE], each function
/// pointed at its slot [STUB, ENTRY, REWRITE], the FLAG, then each
/// function pointed at its new target [STUB, ENTRY, REWRITE]).
pub mod write_kind {
    /// A whole 14-byte stub, made with one write (/proc/PID/mem): a live
    /// stub (one an entry jump leads to) is re-pointed in place, and no
    /// kill leaves it half made.
    pub const STUB: u32 = 0;
    /// The two bytes at the patch point: `66 90` or the jump to the stub.
    pub const ENTRY: u32 = 1;
    /// The switch of a change of several functions: one byte in a page
    /// the runtime mapped next to the library, read by the guarded slots
    /// of that change (0: where each function went before, 1: where it
    /// goes after). Not executed: no thread can be "inside" it.
    pub const FLAG: u32 = 2;
    // 3 and 4 (the guarded stub's head and tail, protocol 4) are retired.
    /// Code in a page the runtime mapped next to a library (a
    /// trampoline, a far stub, a guarded slot), one aligned word at most:
    /// never reachable before the write that leads to it.
    pub const CODE: u32 = 5;
    /// A function without patchable padding: its first instructions
    /// (after `endbr64`), replaced by `jmp rel32` and `int3` filler, or
    /// put back. Made with one write (/proc/PID/mem), so no kill leaves
    /// it half done.
    pub const REWRITE: u32 = 6;
    /// Not a write (length 0): the plan switches threads one by one
    /// ([`crate::transition`]). Its place is just before the plan's FLAG:
    /// the tool marks every thread old, makes the FLAG write, switches
    /// each thread once no replaced function's old code is on its stack,
    /// and makes the rest of the plan only when every thread is new.
    pub const TRANSITION: u32 = 7;
    /// Not a write (length 0): one function of a per-thread plan, where
    /// its old code is and its guarded slot ([`crate::transition::OldCode`]).
    pub const OLD_CODE: u32 = 8;
}

/// One change of code bytes (or of a flag) the tool makes while every
/// thread is stopped. The tool checks that memory still holds `old` (or,
/// completing a killed tool's journal, a later state of the plan) before
/// writing `new`, and that no thread's instruction pointer lies strictly
/// inside `(addr, addr + len)` (nothing for a [`write_kind::FLAG`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Write {
    pub addr: u64,
    pub len: u32,
    pub kind: u32,
    pub old: [u8; 16],
    pub new: [u8; 16],
}

impl Write {
    pub const ZERO: Write = Write {
        addr: 0,
        len: 0,
        kind: 0,
        old: [0; 16],
        new: [0; 16],
    };

    /// The write of `new` over `old` (the same length, at most 16 bytes)
    /// at `addr`.
    pub fn new(addr: u64, kind: u32, old: &[u8], new: &[u8]) -> Write {
        let mut w = Write::ZERO;
        w.addr = addr;
        w.len = old.len() as u32;
        w.kind = kind;
        w.old[..old.len()].copy_from_slice(old);
        w.new[..new.len()].copy_from_slice(new);
        w
    }

    /// Bytes one record takes in `Interface::res_writes`.
    pub const SIZE: usize = 48;

    /// The record as it lies in the result area (little-endian, the
    /// layout of this `#[repr(C)]` struct on x86-64).
    pub fn to_bytes(&self) -> [u8; Write::SIZE] {
        let mut b = [0u8; Write::SIZE];
        b[0..8].copy_from_slice(&self.addr.to_le_bytes());
        b[8..12].copy_from_slice(&self.len.to_le_bytes());
        b[12..16].copy_from_slice(&self.kind.to_le_bytes());
        b[16..32].copy_from_slice(&self.old);
        b[32..48].copy_from_slice(&self.new);
        b
    }

    /// A record read from the result area; `None` when `raw` is shorter
    /// than [`Write::SIZE`]. A length over 16 is cut to 16.
    pub fn from_bytes(raw: &[u8]) -> Option<Write> {
        let raw: &[u8; Write::SIZE] = raw.get(..Write::SIZE)?.try_into().ok()?;
        let mut w = Write::ZERO;
        w.addr = u64::from_le_bytes(raw[0..8].try_into().ok()?);
        w.len = u32::from_le_bytes(raw[8..12].try_into().ok()?).min(16);
        w.kind = u32::from_le_bytes(raw[12..16].try_into().ok()?);
        w.old.copy_from_slice(&raw[16..32]);
        w.new.copy_from_slice(&raw[32..48]);
        Some(w)
    }
}

/// One applied patch as published to the tool. Pointers are addresses in
/// the patched process, each to a NUL-terminated string.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PatchRecord {
    pub patch_id: [u8; 32],
    /// Seconds since the Unix epoch (UTC) when the patch was applied.
    pub applied_at: i64,
    pub container_path: u64,
    pub target_path: u64,
    /// The container's `.ulp.comments` text (may be empty).
    pub comments: u64,
    pub nunits: u64,
    /// [`record_flag`] bits.
    pub flags: u64,
}

/// The bits of [`PatchRecord::flags`].
pub mod record_flag {
    /// Applied by the runtime itself from the patch store, when the
    /// process started or when its target arrived by `dlopen` (protocol 8).
    pub const AT_START: u64 = 1;
}

impl PatchRecord {
    /// Bytes one record takes in the published array.
    pub const SIZE: usize = 80;

    /// The record as the runtime publishes it (little-endian, the layout
    /// of this `#[repr(C)]` struct on x86-64).
    pub fn to_bytes(&self) -> [u8; PatchRecord::SIZE] {
        let mut b = [0u8; PatchRecord::SIZE];
        b[..32].copy_from_slice(&self.patch_id);
        b[32..40].copy_from_slice(&self.applied_at.to_le_bytes());
        b[40..48].copy_from_slice(&self.container_path.to_le_bytes());
        b[48..56].copy_from_slice(&self.target_path.to_le_bytes());
        b[56..64].copy_from_slice(&self.comments.to_le_bytes());
        b[64..72].copy_from_slice(&self.nunits.to_le_bytes());
        b[72..80].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// A record read from the published array; `None` when `raw` is
    /// shorter than [`PatchRecord::SIZE`].
    pub fn from_bytes(raw: &[u8]) -> Option<PatchRecord> {
        let raw: &[u8; PatchRecord::SIZE] = raw.get(..PatchRecord::SIZE)?.try_into().ok()?;
        let u64_at =
            |o: usize| -> Option<u64> { Some(u64::from_le_bytes(raw[o..o + 8].try_into().ok()?)) };
        let mut patch_id = [0u8; 32];
        patch_id.copy_from_slice(&raw[..32]);
        Some(PatchRecord {
            patch_id,
            applied_at: u64_at(32)? as i64,
            container_path: u64_at(40)?,
            target_path: u64_at(48)?,
            comments: u64_at(56)?,
            nunits: u64_at(64)?,
            flags: u64_at(72)?,
        })
    }
}

#[repr(C)]
pub struct Interface {
    pub magic: u64,
    pub version: u32,
    pub state: u32,

    /// Address of the runtime's resume routine and of the byte after it.
    /// The tool runs `__ulp_entry` with this routine as its return address
    /// and an `rt_sigframe` of the thread's own state above it, so the
    /// call returns to the thread's code by itself (`rt_sigreturn`) even if
    /// the tool died meanwhile. The frame's contract is
    /// `ulp_process::ReturnPath`.
    pub resume: u64,
    pub resume_end: u64,
    /// The address of `__ulp_entry` in this process, written once by the
    /// constructor with the return path: the tool calls what the runtime
    /// says, not what a symbol table it may have kept from another build
    /// of the same file says.
    pub entry: u64,
    /// Where the resume routine reports a finished call: the call's cookie
    /// (from its frame) in `[0]`, written after its return value in `[1]`.
    pub call_done: [u64; 2],

    /// Total bytes ever appended to the ring; the ring holds the last
    /// `min(ring_head, RING_SIZE)` of them, at `ring_head % RING_SIZE`.
    pub ring_head: u64,
    pub ring: [u8; RING_SIZE],

    pub req_op: u32,
    pub req_len: u32,
    pub req: [u8; REQUEST_MAX],

    pub res_code: i32,
    pub res_nwrites: u32,
    pub res_msg: [u8; RESULT_MSG_MAX],
    pub res_writes: [Write; MAX_WRITES],

    /// Seqlock: odd while the runtime rewrites the registry.
    pub reg_generation: u64,
    pub reg_count: u64,
    /// Address of `reg_count` consecutive [`PatchRecord`]s, oldest first.
    pub reg_records: u64,

    /// The write journal: 1 when the writes in `res_writes` were handed to
    /// a tool and not (yet) all made. The runtime sets it with every result
    /// that carries writes (0 otherwise); the tool clears it once it has
    /// made them all. A tool that finds it set before its own call knows an
    /// earlier tool was killed between the runtime's record and the end of
    /// its writes, and completes them (each write whose bytes are still
    /// `old` gets `new`) so the code matches the registry again.
    pub writes_pending: u64,
    /// `req_flag` bits the tool sets with each request.
    pub req_flags: u64,
    /// The threads a per-thread transition still waits for, as the tool
    /// last saw them (written by the tool, read by `ulp patches`).
    pub pending: transition::Pending,
    /// 1 once a tool may have pointed a GOT slot of this process at a
    /// patched function (`ulp trigger --redirect-got`): the tool writes it,
    /// with every thread stopped, before it moves the first slot, and
    /// nothing clears it. While it is 0 no slot can hold anything but what
    /// the loader put there, so a plan that changes a redirected entry
    /// (a revert) need not look for moved slots in every loaded object
    /// (`ulp-core/src/got.rs`). The runtime never reads it.
    pub got_moved: u64,
}

/// Request flags (`Interface::req_flags`).
pub mod req_flag {
    /// Plan a change of code as a per-thread transition
    /// ([`crate::transition`]) rather than a switch of every thread at
    /// once.
    pub const PER_THREAD: u64 = 1;
}

impl Interface {
    /// All zeros: what the runtime's static starts as, so that the block
    /// lands in `.bss` and costs no file size and no resident memory until
    /// touched. The runtime's constructor then writes `version` and, last,
    /// `magic`: a tool that finds `magic == 0` sees a runtime still
    /// starting.
    pub const ZEROED: Interface = Interface {
        magic: 0,
        version: 0,
        ..Interface::INIT
    };

    pub const INIT: Interface = Interface {
        magic: MAGIC,
        version: PROTOCOL_VERSION,
        state: state::ENABLED,
        req_op: 0,
        req_len: 0,
        req: [0; REQUEST_MAX],
        res_code: 0,
        res_nwrites: 0,
        res_msg: [0; RESULT_MSG_MAX],
        res_writes: [Write::ZERO; MAX_WRITES],
        reg_generation: 0,
        reg_count: 0,
        reg_records: 0,
        ring_head: 0,
        ring: [0; RING_SIZE],
        resume: 0,
        resume_end: 0,
        entry: 0,
        call_done: [0; 2],
        writes_pending: 0,
        req_flags: 0,
        pending: transition::Pending::ZERO,
        got_moved: 0,
    };
}

/// Byte offsets of the fields, for the tool's remote reads and writes.
pub mod offset {
    use super::*;
    use core::mem::offset_of;
    pub const MAGIC: usize = offset_of!(Interface, magic);
    pub const VERSION: usize = offset_of!(Interface, version);
    pub const STATE: usize = offset_of!(Interface, state);
    pub const REQ_OP: usize = offset_of!(Interface, req_op);
    pub const REQ_LEN: usize = offset_of!(Interface, req_len);
    pub const REQ: usize = offset_of!(Interface, req);
    pub const RES_CODE: usize = offset_of!(Interface, res_code);
    pub const RES_NWRITES: usize = offset_of!(Interface, res_nwrites);
    pub const RES_MSG: usize = offset_of!(Interface, res_msg);
    pub const RES_WRITES: usize = offset_of!(Interface, res_writes);
    pub const REG_GENERATION: usize = offset_of!(Interface, reg_generation);
    pub const REG_COUNT: usize = offset_of!(Interface, reg_count);
    pub const REG_RECORDS: usize = offset_of!(Interface, reg_records);
    pub const RING_HEAD: usize = offset_of!(Interface, ring_head);
    pub const RING: usize = offset_of!(Interface, ring);
    pub const RESUME: usize = offset_of!(Interface, resume);
    pub const RESUME_END: usize = offset_of!(Interface, resume_end);
    pub const ENTRY: usize = offset_of!(Interface, entry);
    pub const CALL_DONE: usize = offset_of!(Interface, call_done);
    pub const WRITES_PENDING: usize = offset_of!(Interface, writes_pending);
    pub const REQ_FLAGS: usize = offset_of!(Interface, req_flags);
    pub const PENDING: usize = offset_of!(Interface, pending);
    pub const GOT_MOVED: usize = offset_of!(Interface, got_moved);
}

// The layout is part of the protocol: a change here must bump
// PROTOCOL_VERSION and these numbers together.
const _: () = {
    assert!(offset::MAGIC == 0);
    assert!(offset::VERSION == 8);
    assert!(offset::STATE == 12);
    // What the runtime's constructor writes lies in the block's first 100
    // bytes (the header, the return path, the ring's first line): one page
    // of the process's memory, the one the loader has already written
    // (the runtime's build.rs, `.bss.ulp_interface`).
    assert!(offset::RESUME == 16);
    assert!(offset::RESUME_END == 24);
    assert!(offset::ENTRY == 32);
    assert!(offset::CALL_DONE == 40);
    assert!(offset::RING_HEAD == 56);
    assert!(offset::RING == 64);
    assert!(offset::REQ_OP == offset::RING + RING_SIZE);
    assert!(offset::REQ_LEN == offset::REQ_OP + 4);
    assert!(offset::REQ == offset::REQ_OP + 8);
    assert!(offset::RES_CODE == offset::REQ + REQUEST_MAX);
    assert!(core::mem::size_of::<Write>() == Write::SIZE);
    assert!(core::mem::size_of::<PatchRecord>() == PatchRecord::SIZE);
};

/// The frame a remote call returns through (the tool's side is
/// `ulp_process::frame`, which documents it): offsets from the ucontext,
/// which is where `rsp` points in the resume routine.
pub mod frame {
    /// `uc_stack`, filled by the routine with `sigaltstack(NULL, ...)`.
    pub const UC_STACK: usize = 16;
    /// `uc_sigmask`, filled by the routine with `rt_sigprocmask`.
    pub const UC_SIGMASK: usize = 296;
    /// The call's cookie.
    pub const COOKIE: usize = 304;
    /// The address of the done word (`Interface::call_done` for the runtime).
    pub const DONE_PTR: usize = 312;
    /// How long (µs) the resume routine waits, asleep, for the tool.
    pub const WAIT_US: usize = 320;
    /// The signal the resume routine sends its own thread once the done
    /// word is written (`SIGURG`, default action: ignore), when the thread
    /// does not block it and the process has no handler for it: its
    /// signal-delivery-stop tells the tracing tool that the call is over.
    /// The tool drops it (a `tgkill` from the process itself, at that
    /// stop).
    pub const NOTICE_SIGNAL: i32 = 23;
    /// Or-ed into the cookie the routine stores in the done word when the
    /// notice follows: the tool then waits for its stop rather than
    /// interrupting the thread (cookies never have this bit).
    pub const NOTICE_FLAG: u64 = 1 << 63;
}

/// The APPLY request, as laid out in the request area:
/// three fields, each a little-endian `u32` length followed by its bytes:
/// the container path (no NUL), the raw `.ulp` section, the raw
/// `.ulp.comments` section (may be empty).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApplyRequest<'a> {
    pub container_path: &'a [u8],
    pub ulp: &'a [u8],
    pub comments: &'a [u8],
    /// One little-endian `u64` per unit of `ulp`, in its order: the size
    /// of the old function as the target file's symbol tables give it (0:
    /// unknown). The entry rewrite decodes that many bytes; the runtime
    /// only sees the dynamic symbol table in memory, which has no local
    /// (static) functions.
    pub sizes: &'a [u8],
}

impl<'a> ApplyRequest<'a> {
    pub fn encoded_len(&self) -> usize {
        16 + self.container_path.len() + self.ulp.len() + self.comments.len() + self.sizes.len()
    }

    /// Encodes into `out`; returns the length used, or `None` when `out`
    /// is too small.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let mut pos = 0;
        for field in [self.container_path, self.ulp, self.comments, self.sizes] {
            let len = u32::try_from(field.len()).ok()?;
            out.get_mut(pos..pos + 4)?
                .copy_from_slice(&len.to_le_bytes());
            pos += 4;
            out.get_mut(pos..pos + field.len())?.copy_from_slice(field);
            pos += field.len();
        }
        Some(pos)
    }

    /// Decodes a request; `None` on any inconsistency.
    pub fn decode(mut input: &'a [u8]) -> Option<Self> {
        let mut fields: [&'a [u8]; 4] = [&[]; 4];
        for f in fields.iter_mut() {
            let len = u32::from_le_bytes(input.get(..4)?.try_into().ok()?) as usize;
            *f = input.get(4..4usize.checked_add(len)?)?;
            input = &input[4 + len..];
        }
        if !input.is_empty() || fields[3].len() & 7 != 0 {
            return None;
        }
        Some(ApplyRequest {
            container_path: fields[0],
            ulp: fields[1],
            comments: fields[2],
            sizes: fields[3],
        })
    }

    /// The size the tool found for unit `i` (`None`: unknown).
    pub fn size_of(&self, i: usize) -> Option<u64> {
        let b = self.sizes.get(8 * i..8 * i + 8)?;
        let size = u64::from_le_bytes(b.try_into().ok()?);
        (size != 0).then_some(size)
    }
}

/// The REPLACE request: a little-endian `u32` length and the library (as
/// in REVERT_ALL, no NUL), followed by an encoded [`ApplyRequest`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReplaceRequest<'a> {
    pub library: &'a [u8],
    pub apply: ApplyRequest<'a>,
}

impl<'a> ReplaceRequest<'a> {
    pub fn encoded_len(&self) -> usize {
        4 + self.library.len() + self.apply.encoded_len()
    }

    /// Encodes into `out`; returns the length used, or `None` when `out`
    /// is too small.
    pub fn encode(&self, out: &mut [u8]) -> Option<usize> {
        let len = u32::try_from(self.library.len()).ok()?;
        out.get_mut(..4)?.copy_from_slice(&len.to_le_bytes());
        let end = 4 + self.library.len();
        out.get_mut(4..end)?.copy_from_slice(self.library);
        Some(end + self.apply.encode(out.get_mut(end..)?)?)
    }

    /// Decodes a request; `None` on any inconsistency.
    pub fn decode(input: &'a [u8]) -> Option<Self> {
        let len = u32::from_le_bytes(input.get(..4)?.try_into().ok()?) as usize;
        let end = 4usize.checked_add(len)?;
        Some(ReplaceRequest {
            library: input.get(4..end)?,
            apply: ApplyRequest::decode(input.get(end..)?)?,
        })
    }
}

/// The two-byte instruction at a patchable entry that is not redirected.
pub const ENTRY_NOP: [u8; 2] = [0x66, 0x90];
/// Bytes reserved before the entry for the stub.
pub const STUB_LEN: usize = 14;

/// The first bytes of the absolute stub: `jmp *0(%rip)`.
pub const ABSOLUTE_STUB_HEAD: [u8; 6] = [0xff, 0x25, 0, 0, 0, 0];

/// The stub to place at `stub` (the 14 bytes before the entry) so that it
/// jumps to `target`: the direct form when `target` is within reach of a
/// `jmp rel32`, the absolute form otherwise.
pub fn stub_bytes(stub: u64, target: u64) -> [u8; STUB_LEN] {
    direct_stub(stub, target).unwrap_or_else(|| absolute_stub(target))
}

/// The absolute stub: `jmp *0(%rip)` (`ff 25 00 00 00 00`) followed by the
/// absolute address of `target`. An indirect jump; reaches anywhere.
pub fn absolute_stub(target: u64) -> [u8; STUB_LEN] {
    let mut b = [0u8; STUB_LEN];
    b[..6].copy_from_slice(&ABSOLUTE_STUB_HEAD);
    b[6..].copy_from_slice(&target.to_le_bytes());
    b
}

/// The direct stub at `stub`: `jmp rel32` (`e9 <rel32>`, relative to
/// `stub + 5`) to `target`, then 9 one-byte NOPs that fill the 14 bytes and
/// are never executed. `None` when `target` is not within ±2 GiB of
/// `stub + 5`.
pub fn direct_stub(stub: u64, target: u64) -> Option<[u8; STUB_LEN]> {
    let rel = i128::from(target) - (i128::from(stub) + 5);
    let rel = i32::try_from(rel).ok()?;
    let mut b = [0x90u8; STUB_LEN];
    b[0] = 0xe9;
    b[1..5].copy_from_slice(&rel.to_le_bytes());
    Some(b)
}

/// Where the stub at `stub` holding `bytes` (its 14 bytes) jumps, when
/// they are one of our forms ([`parse_stub`]); `None` for anything else
/// (padding NOPs included).
pub fn stub_target(stub: u64, bytes: &[u8]) -> Option<u64> {
    parse_stub(stub, bytes).map(|s| s.target())
}

/// A stub in one of our forms, decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stub {
    /// [`direct_stub`].
    Direct { target: u64 },
    /// [`absolute_stub`].
    Absolute { target: u64 },
}

impl Stub {
    /// Where the stub jumps.
    pub fn target(&self) -> u64 {
        match *self {
            Stub::Direct { target } | Stub::Absolute { target } => target,
        }
    }
}

fn rel32_at(b: &[u8], at: usize, base: u64) -> Option<u64> {
    let rel = i32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?);
    Some(base.wrapping_add(rel as i64 as u64))
}

/// Decodes the 14 bytes at `stub` when they are one of our forms; `None`
/// for anything else (padding NOPs, a half-written stub).
pub fn parse_stub(stub: u64, bytes: &[u8]) -> Option<Stub> {
    let b: &[u8; STUB_LEN] = bytes.get(..STUB_LEN)?.try_into().ok()?;
    if b[..6] == ABSOLUTE_STUB_HEAD {
        let target = u64::from_le_bytes(b[6..].try_into().ok()?);
        return Some(Stub::Absolute { target });
    }
    if b[0] == 0xe9 && b[5..].iter().all(|&x| x == 0x90) {
        let target = rel32_at(b, 1, stub.wrapping_add(5))?;
        return Some(Stub::Direct { target });
    }
    None
}

/// The short jump at `entry` back to the stub starting at `stub`
/// (`eb f0` without endbr64, `eb ec` after it).
pub fn entry_jump(stub: u64, entry: u64) -> Option<[u8; 2]> {
    let rel = (stub as i64).checked_sub(entry as i64 + 2)?;
    let rel = i8::try_from(rel).ok()?;
    Some([0xeb, rel as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_round_trips() {
        let r = ApplyRequest {
            container_path: b"/tmp/p.so",
            ulp: &[1, 2, 3],
            comments: b"",
            sizes: &[9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        };
        let mut buf = [0u8; 64];
        let n = r.encode(&mut buf).unwrap();
        assert_eq!(n, r.encoded_len());
        assert_eq!(ApplyRequest::decode(&buf[..n]), Some(r));
        assert_eq!(
            (r.size_of(0), r.size_of(1), r.size_of(2)),
            (Some(9), None, None)
        );
        assert_eq!(ApplyRequest::decode(&buf[..n - 1]), None);
        assert!(r.encode(&mut buf[..5]).is_none());
    }

    #[test]
    fn replace_request_round_trips() {
        let r = ReplaceRequest {
            library: b"libfoo.so.1",
            apply: ApplyRequest {
                container_path: b"/tmp/p.so",
                ulp: &[1, 2, 3],
                comments: b"x",
                sizes: &[],
            },
        };
        let mut buf = [0u8; 64];
        let n = r.encode(&mut buf).unwrap();
        assert_eq!(n, r.encoded_len());
        assert_eq!(ReplaceRequest::decode(&buf[..n]), Some(r));
        assert_eq!(ReplaceRequest::decode(&buf[..n - 1]), None);
        assert_eq!(ReplaceRequest::decode(&buf[..3]), None);
        assert!(r.encode(&mut buf[..20]).is_none());
    }

    /// The bytes of a value as it lies in memory.
    fn memory_of<T>(v: &T) -> &[u8] {
        // SAFETY: any initialised value may be viewed as bytes; both types
        // are `#[repr(C)]` without padding (sizes asserted above).
        unsafe { core::slice::from_raw_parts((v as *const T).cast(), core::mem::size_of::<T>()) }
    }

    #[test]
    fn records_encode_as_they_lie_in_memory() {
        let w = Write::new(
            0x7f00_1234_5678,
            write_kind::REWRITE,
            &[1, 2, 3],
            &[4, 5, 6],
        );
        assert_eq!(&w.to_bytes()[..], memory_of(&w));
        assert_eq!(Write::from_bytes(&w.to_bytes()), Some(w));
        assert_eq!(Write::from_bytes(&w.to_bytes()[..47]), None);
        let mut long = w.to_bytes();
        long[8] = 200;
        assert_eq!(Write::from_bytes(&long).map(|w| w.len), Some(16));
        let r = PatchRecord {
            patch_id: [7; 32],
            applied_at: -5,
            container_path: 0x1000,
            target_path: 0x2000,
            comments: 0,
            nunits: 3,
            flags: record_flag::AT_START,
        };
        assert_eq!(&r.to_bytes()[..], memory_of(&r));
        let back = PatchRecord::from_bytes(&r.to_bytes()).unwrap();
        assert_eq!(back.to_bytes(), r.to_bytes());
        assert!(PatchRecord::from_bytes(&r.to_bytes()[..79]).is_none());
    }

    #[test]
    fn store_names_for_c_are_the_same() {
        assert_eq!(
            store::DEFAULT_DIR_C.to_bytes(),
            store::DEFAULT_DIR.as_bytes()
        );
        assert_eq!(store::ENV_C.to_bytes(), store::ENV.as_bytes());
    }

    #[test]
    fn error_codes_round_trip() {
        for &e in errors::ALL {
            assert_eq!(code::error(code::of_error(e)), Some(e));
        }
        assert_eq!(code::of_error(errors::EDLOPEN), 287);
        for c in [code::OK, code::FAILED, code::NOTHING_TO_UNDO, -1, 255, 290] {
            assert_eq!(code::error(c), None, "{c}");
        }
    }

    #[test]
    fn jumps_match_compat() {
        assert_eq!(entry_jump(0x1000 - 14, 0x1000), Some([0xeb, 0xf0]));
        assert_eq!(entry_jump(0x1000 - 14, 0x1004), Some([0xeb, 0xec]));
        assert_eq!(
            &absolute_stub(0x1122)[..8],
            &[0xff, 0x25, 0, 0, 0, 0, 0x22, 0x11]
        );
    }

    #[test]
    fn stub_form_follows_reach() {
        let stub = 0x7f00_0000_1000u64;
        let near = stub_bytes(stub, stub + 0x105);
        assert_eq!(near[..5], [0xe9, 0x00, 0x01, 0, 0]);
        assert_eq!(near[5..], [0x90; 9]);
        assert_eq!(stub_target(stub, &near), Some(stub + 0x105));
        // Backwards, and the two ends of the reach of rel32 from stub + 5.
        let back = stub_bytes(stub, stub - 0x1000);
        assert_eq!(back[0], 0xe9);
        assert_eq!(stub_target(stub, &back), Some(stub - 0x1000));
        let top = stub + 5 + i32::MAX as u64;
        let bottom = stub + 5 - (1u64 << 31);
        for t in [top, bottom] {
            assert_eq!(stub_bytes(stub, t)[0], 0xe9, "{t:#x}");
            assert_eq!(stub_target(stub, &stub_bytes(stub, t)), Some(t));
        }
        // One byte further, and an executable far from its libraries.
        for t in [top + 1, bottom - 1, 0x5555_5555_4000, u64::MAX, 0] {
            let far = stub_bytes(stub, t);
            assert_eq!(far, absolute_stub(t), "{t:#x}");
            assert_eq!(stub_target(stub, &far), Some(t));
        }
        assert_eq!(direct_stub(stub, top + 1), None);
        // Not ours: padding, a rel32 jump followed by other bytes.
        assert_eq!(stub_target(stub, &[0x90; 14]), None);
        let mut odd = near;
        odd[13] = 0xcc;
        assert_eq!(stub_target(stub, &odd), None);
        assert_eq!(stub_target(stub, &near[..13]), None);
    }
}

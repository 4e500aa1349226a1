//! The exported block `__ulp_interface` and every access the runtime makes
//! to it.
//!
//! The tool reads and writes this block from outside the process (see the
//! ownership rules in `ulp_abi`), so the runtime never holds a Rust
//! reference to the whole block: each access goes through a raw pointer to
//! one field, with volatile reads and writes where the tool may look at the
//! same time (registry, ring, state). Calls are serialised by the `BUSY`
//! flag in `lib.rs`; the constructor runs before any call can be made.

#[allow(unused_imports)]
use crate::prelude::*;

use core::cell::UnsafeCell;
use core::ptr::{self, addr_of, addr_of_mut};
use core::sync::atomic::{fence, Ordering};

use ulp_abi::{Interface, PatchRecord, Write, MAX_WRITES, REQUEST_MAX, RESULT_MSG_MAX};

/// The block, with interior mutability so that it lands in writable memory
/// and is still a plain `static` with the layout of [`Interface`].
#[repr(transparent)]
pub struct SharedInterface(UnsafeCell<Interface>);

// SAFETY: the runtime touches the block only from `__ulp_entry` (one call at
// a time, guarded by `BUSY`) and from the constructor (before any call), and
// only through raw pointers to single fields; the tool's remote accesses
// follow the ownership rules documented in `ulp_abi`.
unsafe impl Sync for SharedInterface {}

impl SharedInterface {
    pub const fn new() -> SharedInterface {
        SharedInterface(UnsafeCell::new(Interface::ZEROED))
    }

    fn get(&self) -> *mut Interface {
        self.0.get()
    }
}

impl Default for SharedInterface {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
fn block() -> *mut Interface {
    crate::__ulp_interface.get()
}

/// Marks the block valid for the tool: `version`, the resume routine's
/// range and the entry point's address, then `magic` (the tool checks the
/// magic first). Called first thing by the constructor.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub fn publish_header() {
    let (resume, resume_end) = crate::resume::range();
    // SAFETY: aligned fields of a static, written before any call can be
    // made; volatile because the tool reads them from outside.
    unsafe {
        addr_of_mut!((*block()).resume).write_volatile(resume);
        addr_of_mut!((*block()).resume_end).write_volatile(resume_end);
        addr_of_mut!((*block()).entry)
            .write_volatile(crate::__ulp_entry as *const () as usize as u64);
        addr_of_mut!((*block()).version).write_volatile(ulp_abi::PROTOCOL_VERSION);
        fence(Ordering::Release);
        addr_of_mut!((*block()).magic).write_volatile(ulp_abi::MAGIC);
    }
}

/// `Interface::state`; the tool may change it between calls.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub fn state() -> u32 {
    // SAFETY: an aligned field of a static; volatile because the tool writes
    // it from outside.
    unsafe { addr_of!((*block()).state).read_volatile() }
}

#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub fn set_state(state: u32) {
    // SAFETY: as in `state`.
    unsafe { addr_of_mut!((*block()).state).write_volatile(state) }
}

/// The operation and a copy of the request bytes; `None` for the bytes
/// when `req_len` is larger than the request area.
pub fn request() -> (u32, Option<Vec<u8>>) {
    let b = block();
    // SAFETY: aligned fields of a static; the tool wrote them before the
    // call and does not touch them during it.
    unsafe {
        let op = addr_of!((*b).req_op).read_volatile();
        let len = addr_of!((*b).req_len).read_volatile() as usize;
        if len > REQUEST_MAX {
            return (op, None);
        }
        let mut bytes = vec![0u8; len];
        ptr::copy_nonoverlapping(addr_of!((*b).req).cast::<u8>(), bytes.as_mut_ptr(), len);
        (op, Some(bytes))
    }
}

/// The request's flags (`ulp_abi::req_flag`).
pub fn req_flags() -> u64 {
    // SAFETY: an aligned field of a static, written by the tool before the
    // call.
    unsafe { addr_of!((*block()).req_flags).read_volatile() }
}

/// Fills the result area: `msg` is cut to fit with its NUL, `writes` must
/// hold at most [`MAX_WRITES`] entries (the callers check; extra ones are
/// dropped here rather than overflow the area).
pub fn set_result(code: i32, msg: &str, writes: &[Write]) {
    let b = block();
    let writes = &writes[..writes.len().min(MAX_WRITES)];
    let msg = msg.as_bytes();
    let n = msg.len().min(RESULT_MSG_MAX - 1);
    // SAFETY: the result area belongs to the runtime during a call; every
    // copy stays within its field (lengths clamped above).
    unsafe {
        let m = addr_of_mut!((*b).res_msg).cast::<u8>();
        ptr::copy_nonoverlapping(msg.as_ptr(), m, n);
        m.add(n).write(0);
        let w = addr_of_mut!((*b).res_writes).cast::<Write>();
        ptr::copy_nonoverlapping(writes.as_ptr(), w, writes.len());
        addr_of_mut!((*b).res_nwrites).write_volatile(writes.len() as u32);
        addr_of_mut!((*b).res_code).write_volatile(code);
        // The journal: these writes are now the tool's to make (it clears
        // the mark when done); a result without writes has nothing pending.
        addr_of_mut!((*b).writes_pending).write_volatile(u64::from(!writes.is_empty()));
    }
}

/// Publishes `records` as the registry the tool reads, under the seqlock
/// `reg_generation`: odd while the pointer and count change. The caller
/// keeps `records` (and every string it points to) alive until the next
/// publication has replaced it; the tool rereads when the generation moved,
/// so a stale read of freed memory is detected, never trusted.
pub fn publish(records: &[PatchRecord]) {
    let b = block();
    let (addr, count) = if records.is_empty() {
        (0, 0)
    } else {
        (records.as_ptr() as u64, records.len() as u64)
    };
    // SAFETY: aligned fields of a static, written only by the runtime.
    unsafe {
        let gen = addr_of_mut!((*b).reg_generation);
        let g = gen.read_volatile();
        let odd = if g & 1 == 0 { g + 1 } else { g + 2 };
        gen.write_volatile(odd);
        // The odd generation must be visible before the fields change, and
        // the records' bytes before the pointer to them; the partner reads
        // are the tool's generation checks before and after its copy.
        fence(Ordering::SeqCst);
        addr_of_mut!((*b).reg_records).write_volatile(addr);
        addr_of_mut!((*b).reg_count).write_volatile(count);
        fence(Ordering::SeqCst);
        gen.write_volatile(odd + 1);
    }
}

/// The constructor's first line, into the fresh ring (head 0: the block
/// is zeroed memory of this load, and nothing writes the ring before the
/// constructor): bytes first, then `ring_head`, with nothing read, so the
/// first touch of the ring's page is a write (one page fault, not a read
/// of the zero page and then a second fault for the copy).
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub fn ring_start(bytes: &[u8]) {
    let b = block();
    let bytes = &bytes[..bytes.len().min(ulp_abi::RING_SIZE)];
    // SAFETY: fields of the runtime's own block, within the ring's size.
    unsafe {
        let ring = addr_of_mut!((*b).ring).cast::<u8>();
        for (i, &byte) in bytes.iter().enumerate() {
            ring.add(i).write_volatile(byte);
        }
        fence(Ordering::Release);
        addr_of_mut!((*b).ring_head).write_volatile(bytes.len() as u64);
    }
}

/// Appends raw bytes to the message ring: bytes first, then `ring_head`,
/// so a reader that sees the new head finds the bytes in place.
#[cfg_attr(not(test), link_section = ".text.startup.ulp")]
pub fn ring_append(bytes: &[u8]) {
    let b = block();
    let size = ulp_abi::RING_SIZE as u64;
    // SAFETY: the ring belongs to the runtime; every index is reduced modulo
    // its size.
    unsafe {
        let head_ptr = addr_of_mut!((*b).ring_head);
        let head = head_ptr.read_volatile();
        let ring = addr_of_mut!((*b).ring).cast::<u8>();
        for (i, &byte) in bytes.iter().enumerate() {
            let pos = (head.wrapping_add(i as u64) % size) as usize;
            ring.add(pos).write_volatile(byte);
        }
        fence(Ordering::Release);
        head_ptr.write_volatile(head.wrapping_add(bytes.len() as u64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The ring as the tool reads it: the last `min(head, size)` bytes.
    fn ring_tail() -> Vec<u8> {
        let b = block();
        // SAFETY: plain reads of a static in a single-threaded test.
        unsafe {
            let head = addr_of!((*b).ring_head).read_volatile();
            let size = ulp_abi::RING_SIZE as u64;
            let ring = addr_of!((*b).ring).cast::<u8>();
            (head.saturating_sub(size)..head)
                .map(|i| *ring.add((i % size) as usize))
                .collect()
        }
    }

    #[test]
    fn ring_wraps_and_keeps_the_newest_bytes() {
        let mut all = Vec::new();
        let mut i = 0;
        while all.len() < 3 * ulp_abi::RING_SIZE + 7 {
            let line = format!("line {i}\n");
            ring_append(line.as_bytes());
            all.extend_from_slice(line.as_bytes());
            i += 1;
        }
        let tail = ring_tail();
        assert_eq!(tail.len(), ulp_abi::RING_SIZE);
        assert_eq!(&tail[..], &all[all.len() - ulp_abi::RING_SIZE..]);
    }
}

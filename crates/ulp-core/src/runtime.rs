//! The runtime (`libpulp.so.0`) as seen from outside a process: where its
//! interface block and entry point are, and reading its state, registry and
//! message ring through process memory, without stopping the process.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use ulp_abi::{
    offset, PatchRecord, Write, GOT_MOVED_SINCE, INTERFACE_SYMBOL, MAGIC, OLDEST_PROTOCOL_READ,
    PROTOCOL_VERSION, RING_SIZE,
};
use ulp_process::{Mapping, Pid, RemoteAddr};

use crate::objects::{objects_from_maps, MappedObject};

/// How long [`Runtime::find_started`] waits, at most, for a runtime that
/// is mapped but has not started.
pub const STARTING_PATIENCE: Duration = Duration::from_millis(250);

/// Why the runtime of a process cannot be used.
#[derive(Debug)]
pub enum RuntimeError {
    /// No mapped object exports the interface symbol.
    NotLoaded,
    /// One does, but its constructor has not published the block yet: the
    /// process is still starting (a preloaded runtime's constructor runs
    /// after those of the libraries the program needs). Busy: loading a
    /// second runtime beside it would leave two in the process.
    Starting {
        pid: Pid,
        path: String,
    },
    /// It is there but speaks another protocol version.
    Incompatible {
        path: String,
        version: u32,
    },
    Process(ulp_process::Error),
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuntimeError::NotLoaded => {
                f.write_str("the live-patching runtime is not loaded in the target process")
            }
            RuntimeError::Starting { pid, path } => write!(
                f,
                "process {pid} is busy: its runtime '{path}' is loaded but has not started (its \
                 constructor has not run: the process is still starting); retry later"
            ),
            RuntimeError::Incompatible { path, version } => write!(
                f,
                "the runtime '{path}' speaks protocol version {version}, this ulp speaks {OLDEST_PROTOCOL_READ} to {PROTOCOL_VERSION}: use the ulp that matches it"
            ),
            RuntimeError::Process(e) => e.fmt(f),
        }
    }
}

impl std::error::Error for RuntimeError {}

impl RuntimeError {
    /// The libpulp error a report of this one starts with.
    pub fn error(&self) -> ulp_abi::errors::UlpError {
        match self {
            RuntimeError::Starting { .. } => ulp_abi::errors::EHOOKNOTRUN,
            _ => ulp_abi::errors::ENOLIBPULP,
        }
    }
}

impl From<ulp_process::Error> for RuntimeError {
    fn from(e: ulp_process::Error) -> Self {
        RuntimeError::Process(e)
    }
}

/// The runtime found in one process.
#[derive(Clone, Debug)]
pub struct Runtime {
    pub pid: Pid,
    pub path: String,
    /// Address of `__ulp_interface` in the process.
    pub interface: RemoteAddr,
    /// The protocol it speaks, from [`OLDEST_PROTOCOL_READ`] to
    /// [`PROTOCOL_VERSION`]: what of the block exists.
    pub version: u32,
    /// Address of `__ulp_entry` in the process.
    pub entry: RemoteAddr,
    /// The resume routine's first byte and the byte after it, as the
    /// runtime published them when it was found (read with the header they
    /// follow: `Interface::resume`); 0 when not published.
    pub resume: (u64, u64),
}

/// Where a runtime file's two symbols are, for one process.
struct RuntimeSymbols {
    bias: u64,
    interface: u64,
    entry: u64,
}

/// The symbol values of each runtime file read so far, by (device, inode,
/// path): one `ulp` run over a thousand processes reads and parses the
/// runtime file once, not a thousand times. `None` records a file that is
/// not a runtime after all.
type SymbolCache = HashMap<(ulp_process::MapsField, u64, String), Option<(u64, u64, bool)>>;

fn symbol_cache() -> &'static Mutex<SymbolCache> {
    static CACHE: OnceLock<Mutex<SymbolCache>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

/// The runtime's symbols in `obj`, from the cache unless `fresh` (then
/// read from the file again, and the cache updated), and whether they came
/// from the cache.
fn runtime_symbols(pid: Pid, obj: &MappedObject, fresh: bool) -> (Option<RuntimeSymbols>, bool) {
    let key = (obj.dev, obj.inode, obj.path.clone());
    let cached = if fresh {
        None
    } else {
        symbol_cache()
            .lock()
            .ok()
            .and_then(|c| c.get(&key).cloned())
    };
    let from_cache = cached.is_some();
    let values = match cached {
        Some(v) => v,
        None => {
            // The exports are in .dynsym, which is small; .symtab of a Rust
            // cdylib has thousands of entries.
            let v = obj
                .open_sections(pid, &[".dynsym", ".dynstr"])
                .ok()
                .and_then(|elf| {
                    let iface = elf.dynamic_symbol(INTERFACE_SYMBOL)?;
                    let entry = elf.dynamic_symbol(ulp_abi::ENTRY_SYMBOL)?;
                    Some((iface.value, entry.value, elf.is_shared_object()))
                });
            if let Ok(mut c) = symbol_cache().lock() {
                c.insert(key, v);
            }
            v
        }
    };
    let symbols = values.map(|(interface, entry, shared)| RuntimeSymbols {
        bias: if shared { obj.bias } else { 0 },
        interface,
        entry,
    });
    (symbols, from_cache)
}

/// Whether a mapped file is a candidate runtime by its name (cheap, no read).
fn looks_like_runtime(obj: &MappedObject) -> bool {
    obj.basename().starts_with("libpulp.so")
}

impl Runtime {
    /// Finds the runtime in `pid` from its maps and the runtime file's
    /// dynamic symbols; checks the magic and protocol version in memory.
    pub fn find(pid: Pid) -> Result<Runtime, RuntimeError> {
        Runtime::find_in(pid, &ulp_process::maps(pid)?)
    }

    /// [`Runtime::find`], looked at again while the runtime is mapped but
    /// has not started ([`RuntimeError::Starting`]: a process starting,
    /// whose runtime's constructor runs right after those of the libraries
    /// it needs), for at most [`STARTING_PATIENCE`]; and the maps it was
    /// found in when they could be read (for the caller's next look at the
    /// process). For a command about the process: a trigger over a busy
    /// host meets processes in that moment, and they are targets like the
    /// others a millisecond later. Never for a process the tool holds.
    pub fn find_started(pid: Pid) -> (Result<Runtime, RuntimeError>, Option<Vec<Mapping>>) {
        let start = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            let found = match ulp_process::maps(pid) {
                Ok(maps) => (Runtime::find_in(pid, &maps), Some(maps)),
                Err(e) => (Err(RuntimeError::Process(e)), None),
            };
            if !matches!(found.0, Err(RuntimeError::Starting { .. }))
                || start.elapsed() >= STARTING_PATIENCE
            {
                return found;
            }
            attempt += 1;
            std::thread::sleep(Duration::from_millis(1 << attempt.min(4)));
        }
    }

    /// [`Runtime::find`] from maps of `pid` already read. A process
    /// without the runtime costs no read but its maps: nothing of it is
    /// read before a mapped file looks like a runtime by its name (a
    /// trigger without `-p` looks at every process on the host).
    pub fn find_in(pid: Pid, maps: &[Mapping]) -> Result<Runtime, RuntimeError> {
        let objects = objects_from_maps(maps);
        for obj in objects.iter().filter(|o| looks_like_runtime(o)) {
            // The cache first; the file again when what the cache says is
            // not what the process has (a file of the same device, inode
            // and path can be another build: an inode number is reused
            // once its file is gone, which a long `ulp watch` may see).
            for fresh in [false, true] {
                let (symbols, cached) = runtime_symbols(pid, obj, fresh);
                let Some(symbols) = symbols else {
                    if cached {
                        // The cache says it is not a runtime: ask the file.
                        continue;
                    }
                    // Not a runtime after all: the next file.
                    break;
                };
                match Runtime::at(pid, obj, &symbols)? {
                    Some(rt) => return Ok(rt),
                    // The cache's symbols lead to no block: ask the file.
                    None if cached => continue,
                    None => {
                        return Err(RuntimeError::Starting {
                            pid,
                            path: obj.path.clone(),
                        })
                    }
                }
            }
        }
        Err(RuntimeError::NotLoaded)
    }

    /// The runtime of `obj` in `pid`, whose symbols are `symbols`, from one
    /// read of its header: `Ok(None)` when the block there has no magic
    /// (the process is still starting, or `symbols` are not this file's);
    /// a runtime of another protocol is an error.
    fn at(
        pid: Pid,
        obj: &MappedObject,
        symbols: &RuntimeSymbols,
    ) -> Result<Option<Runtime>, RuntimeError> {
        let interface = RemoteAddr::new(symbols.bias.wrapping_add(symbols.interface));
        // The header and, right after it, the return path and the entry
        // point's address (one read).
        const HEAD: usize = offset::ENTRY + 8;
        let mut head = [0u8; HEAD];
        ulp_process::read_mem(pid, interface, &mut head)?;
        let u64_at = |o: usize| u64::from_le_bytes(head[o..o + 8].try_into().unwrap());
        let version = u32::from_le_bytes(
            head[offset::VERSION..offset::VERSION + 4]
                .try_into()
                .unwrap(),
        );
        if u64_at(offset::MAGIC) != MAGIC {
            // Mapped, but its constructor has not run yet: the process is
            // still starting, and the loader may not even have put the
            // data segment in place (the bytes there can be the file's, or
            // zero). Not patchable (yet).
            return Ok(None);
        }
        if !(OLDEST_PROTOCOL_READ..=PROTOCOL_VERSION).contains(&version) {
            return Err(RuntimeError::Incompatible {
                path: obj.path.clone(),
                version,
            });
        }
        // The entry point as the runtime published it; the symbol's value
        // where it did not (cannot happen with this protocol).
        let entry = match u64_at(offset::ENTRY) {
            0 => symbols.bias.wrapping_add(symbols.entry),
            e => e,
        };
        Ok(Some(Runtime {
            pid,
            path: obj.path.clone(),
            interface,
            version,
            entry: RemoteAddr::new(entry),
            resume: (u64_at(offset::RESUME), u64_at(offset::RESUME_END)),
        }))
    }

    fn read(&self, off: usize, buf: &mut [u8]) -> Result<(), ulp_process::Error> {
        ulp_process::read_mem(self.pid, self.interface + off as u64, buf)
    }

    fn read_u32(&self, off: usize) -> Result<u32, ulp_process::Error> {
        let mut b = [0u8; 4];
        self.read(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_u64(&self, off: usize) -> Result<u64, ulp_process::Error> {
        let mut b = [0u8; 8];
        self.read(off, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn state(&self) -> Result<u32, ulp_process::Error> {
        self.read_u32(offset::STATE)
    }

    /// Writes the request area (the caller holds the thread that will run
    /// the entry point, which keeps other tools out).
    pub fn write_request(&self, op: u32, req: &[u8], flags: u64) -> Result<(), ulp_process::Error> {
        let mut head = [0u8; 8];
        head[..4].copy_from_slice(&op.to_le_bytes());
        head[4..].copy_from_slice(&(req.len() as u32).to_le_bytes());
        let at = |o: usize| (self.interface + o as u64).get();
        // One system call, in this order: the request, its flags, its
        // operation and length.
        ulp_process::write_pieces(
            self.pid,
            &[
                (at(offset::REQ), req),
                (at(offset::REQ_FLAGS), &flags.to_le_bytes()),
                (at(offset::REQ_OP), &head),
            ],
        )
    }

    /// Whether the runtime's write journal holds writes a tool was handed
    /// and did not finish (see `Interface::writes_pending`).
    pub fn writes_pending(&self) -> Result<bool, ulp_process::Error> {
        Ok(self.read_u64(offset::WRITES_PENDING)? != 0)
    }

    /// Whether a tool may have moved a GOT slot of this process
    /// (`Interface::got_moved`); unreadable counts as yes, and so does a
    /// runtime of a protocol without the word.
    pub fn got_moved(&self) -> bool {
        self.version < GOT_MOVED_SINCE || self.read_u64(offset::GOT_MOVED).map_or(true, |v| v != 0)
    }

    /// Records, before the first slot moves, that slots may be moved from
    /// now on (`Interface::got_moved`). A runtime of a protocol without the
    /// word has nothing to record it in (the bytes there are not its
    /// block's): every revert looks for moved slots there anyway.
    pub fn mark_got_moved(&self) -> Result<(), ulp_process::Error> {
        if self.version < GOT_MOVED_SINCE {
            return Ok(());
        }
        ulp_process::write_mem(
            self.pid,
            self.interface + offset::GOT_MOVED as u64,
            &1u64.to_le_bytes(),
        )
    }

    /// Marks the journal done: every write of the last result is made.
    pub fn clear_pending_writes(&self) -> Result<(), ulp_process::Error> {
        ulp_process::write_mem(
            self.pid,
            self.interface + offset::WRITES_PENDING as u64,
            &0u64.to_le_bytes(),
        )
    }

    /// The per-thread transition the tool last left pending (`id` 0: none).
    pub fn pending(&self) -> Result<ulp_abi::transition::Pending, ulp_process::Error> {
        let mut raw = vec![0u8; ulp_abi::transition::Pending::SIZE];
        self.read(offset::PENDING, &mut raw)?;
        Ok(ulp_abi::transition::Pending::from_bytes(&raw)
            .unwrap_or(ulp_abi::transition::Pending::ZERO))
    }

    /// Records the transition's pending threads for `ulp patches`: the
    /// bytes of a [`ulp_abi::transition::Pending`], its header and the
    /// threads it counts (what follows them is never read).
    pub fn set_pending(&self, bytes: &[u8]) -> Result<(), ulp_process::Error> {
        ulp_process::write_mem(self.pid, self.interface + offset::PENDING as u64, bytes)
    }

    /// The result area after a call: message and writes.
    pub fn read_result(&self) -> Result<(String, Vec<Write>), ulp_process::Error> {
        // The count, the message and the first writes lie one after the
        // other: one read for a plan of up to FIRST_WRITES writes.
        const FIRST_WRITES: usize = 16;
        let size = Write::SIZE;
        let contiguous = offset::RES_MSG == offset::RES_NWRITES + 4
            && offset::RES_WRITES == offset::RES_MSG + ulp_abi::RESULT_MSG_MAX;
        let head_len = if contiguous {
            4 + ulp_abi::RESULT_MSG_MAX + FIRST_WRITES * size
        } else {
            4
        };
        let mut head = vec![0u8; head_len];
        self.read(offset::RES_NWRITES, &mut head)?;
        let n = (u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize)
            .min(ulp_abi::MAX_WRITES);
        let (msg, raw) = if contiguous && n <= FIRST_WRITES {
            let (msg, writes) = head[4..].split_at(ulp_abi::RESULT_MSG_MAX);
            (msg.to_vec(), writes[..n * size].to_vec())
        } else {
            let mut msg = vec![0u8; ulp_abi::RESULT_MSG_MAX];
            self.read(offset::RES_MSG, &mut msg)?;
            let mut raw = vec![0u8; n * size];
            self.read(offset::RES_WRITES, &mut raw)?;
            (msg, raw)
        };
        let end = msg.iter().position(|&b| b == 0).unwrap_or(msg.len());
        let msg = String::from_utf8_lossy(&msg[..end]).into_owned();
        let writes = raw
            .chunks_exact(size)
            .filter_map(Write::from_bytes)
            .collect();
        Ok((msg, writes))
    }

    /// The applied patches, oldest first, read under the registry seqlock.
    pub fn patches(&self) -> Result<Vec<AppliedPatch>, ulp_process::Error> {
        for _ in 0..100 {
            let gen = self.read_u64(offset::REG_GENERATION)?;
            if gen % 2 == 1 {
                std::thread::sleep(std::time::Duration::from_micros(200));
                continue;
            }
            let count = self.read_u64(offset::REG_COUNT)?.min(4096) as usize;
            let addr = self.read_u64(offset::REG_RECORDS)?;
            let result = self.read_records(addr, count);
            if self.read_u64(offset::REG_GENERATION)? == gen {
                return result;
            }
        }
        Err(ulp_process::Error::timeout(
            self.pid,
            "reading the patch registry (it kept changing)",
        ))
    }

    fn read_records(
        &self,
        addr: u64,
        count: usize,
    ) -> Result<Vec<AppliedPatch>, ulp_process::Error> {
        let size = PatchRecord::SIZE;
        let mut raw = vec![0u8; count * size];
        if count > 0 {
            ulp_process::read_mem(self.pid, RemoteAddr::new(addr), &mut raw)?;
        }
        let mut out = Vec::with_capacity(count);
        for r in raw.chunks_exact(size).filter_map(PatchRecord::from_bytes) {
            out.push(AppliedPatch {
                patch_id: r.patch_id,
                applied_at: r.applied_at,
                container_path: self.read_cstr(r.container_path)?,
                target_path: self.read_cstr(r.target_path)?,
                comments: self.read_cstr(r.comments)?,
                at_start: r.flags & ulp_abi::record_flag::AT_START != 0,
            });
        }
        Ok(out)
    }

    fn read_cstr(&self, addr: u64) -> Result<String, ulp_process::Error> {
        if addr == 0 {
            return Ok(String::new());
        }
        let mut out = Vec::new();
        let mut chunk = [0u8; 256];
        while out.len() < 64 * 1024 {
            // Read up to the end of the page only: the next one may be unmapped.
            let at = addr + out.len() as u64;
            let n = chunk.len().min((4096 - (at % 4096)) as usize);
            ulp_process::read_mem(self.pid, RemoteAddr::new(at), &mut chunk[..n])?;
            if let Some(end) = chunk[..n].iter().position(|&b| b == 0) {
                out.extend_from_slice(&chunk[..end]);
                break;
            }
            out.extend_from_slice(&chunk[..n]);
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    }

    /// The message log as lines, oldest first.
    pub fn messages(&self) -> Result<Vec<String>, ulp_process::Error> {
        let head = self.read_u64(offset::RING_HEAD)?;
        let mut ring = vec![0u8; RING_SIZE];
        self.read(offset::RING, &mut ring)?;
        let text: Vec<u8> = if head as usize <= RING_SIZE {
            ring[..head as usize].to_vec()
        } else {
            let at = (head % RING_SIZE as u64) as usize;
            let mut t = ring[at..].to_vec();
            t.extend_from_slice(&ring[..at]);
            // The oldest line was partly overwritten: drop it.
            match t.iter().position(|&b| b == b'\n') {
                Some(nl) => t[nl + 1..].to_vec(),
                None => Vec::new(),
            }
        };
        Ok(String::from_utf8_lossy(&text)
            .split('\n')
            .filter(|l| !l.is_empty())
            .map(|l| l.trim_end_matches('\0').to_string())
            .collect())
    }
}

/// One patch in a process's registry.
#[derive(Clone, Debug)]
pub struct AppliedPatch {
    pub patch_id: [u8; 32],
    pub applied_at: i64,
    pub container_path: String,
    pub target_path: String,
    pub comments: String,
    /// Applied by the runtime itself from the patch store, at process
    /// start or when its target arrived by `dlopen`.
    pub at_start: bool,
}

/// `YYYY-MM-DD HH:MM:SS` (UTC) for seconds since the epoch: the runtime's
/// log timestamps' format (`ulp_abi::time`).
pub fn format_utc(secs: i64) -> String {
    ulp_abi::time::civil(secs).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A cache that says something else about the runtime's file than the
    /// file does (another build that had the same device, inode and path)
    /// finds the runtime all the same, and the entry point called is the
    /// one the runtime published.
    #[test]
    fn a_stale_symbol_cache_is_read_again_and_the_entry_is_the_published_one() {
        // The runtime cargo built beside this test (`<profile>/deps/<test>`).
        let so = ulp_fixtures::profile_dir().join("libpulp.so");
        if !so.exists() {
            eprintln!("skipped: {} not built", so.display());
            return;
        }
        // A shell that says "ready" from `main` (the runtime's constructor
        // has run), then waits; killed when the test ends.
        let mut sh = std::process::Command::new("/bin/sh");
        sh.args(["-c", "echo ready; read x"]).env("LD_PRELOAD", &so);
        let target = ulp_fixtures::Target::spawn(sh);
        let pid = Pid::new(target.pid);
        let maps = ulp_process::maps(pid).unwrap();
        let good = Runtime::find_in(pid, &maps).expect("the runtime");
        let obj = objects_from_maps(&maps)
            .into_iter()
            .find(looks_like_runtime)
            .unwrap();
        let key = (obj.dev, obj.inode, obj.path.clone());
        let (iface, entry, shared) = symbol_cache().lock().unwrap()[&key].unwrap();
        let bias = if shared { obj.bias } else { 0 };
        assert_eq!(good.entry.get(), bias.wrapping_add(entry));
        for stale in [Some((iface + 64, entry + 16, shared)), None] {
            symbol_cache().lock().unwrap().insert(key.clone(), stale);
            let rt = Runtime::find_in(pid, &maps).expect("found again");
            assert_eq!(rt.interface, good.interface, "{stale:?}");
            assert_eq!(rt.entry, good.entry, "{stale:?}");
            assert_eq!(
                symbol_cache().lock().unwrap()[&key],
                Some((iface, entry, shared)),
                "the cache mended"
            );
        }
    }

    #[test]
    fn utc_dates() {
        assert_eq!(super::format_utc(0), "1970-01-01 00:00:00");
        assert_eq!(super::format_utc(951_782_400), "2000-02-29 00:00:00");
        assert_eq!(super::format_utc(1_795_865_400), "2026-11-28 11:30:00");
    }
}

//! Where `ulp watch` learns of new processes: the kernel's process-events
//! connector (netlink), or, when that cannot be had (not root, no
//! connector in the kernel), a scan of the process list every few
//! milliseconds.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ulp_process::Pid;

/// `NETLINK_CONNECTOR` (<linux/netlink.h>).
const NETLINK_CONNECTOR: libc::c_int = 11;
/// `NLMSG_DONE` (<linux/netlink.h>): the type of a message that is whole
/// in one datagram, as the connector's are.
const NLMSG_DONE: u16 = 3;
/// `NLMSG_ERROR`, `NLMSG_NOOP`, `NLMSG_OVERRUN`.
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_OVERRUN: u16 = 4;

/// `struct nlmsghdr` (<linux/netlink.h>): 16 bytes, native endian.
///
/// ```text
/// u32 nlmsg_len;    header and payload
/// u16 nlmsg_type;
/// u16 nlmsg_flags;
/// u32 nlmsg_seq;
/// u32 nlmsg_pid;    the sender's port id
/// ```
const NLMSG_HDRLEN: usize = 16;

/// `struct cn_msg` (<linux/connector.h>): 20 bytes, then `len` bytes of
/// data.
///
/// ```text
/// struct cb_id { u32 idx; u32 val; } id;   CN_IDX_PROC, CN_VAL_PROC
/// u32 seq;
/// u32 ack;
/// u16 len;                                 of the data
/// u16 flags;
/// ```
const CN_MSG_LEN: usize = 20;

/// `struct proc_event` (<linux/cn_proc.h>), the data of a process event:
///
/// ```text
/// u32 what;            PROC_EVENT_*
/// u32 cpu;
/// u64 timestamp_ns;
/// union event_data     for PROC_EVENT_EXEC: struct exec_proc_event
///                      { i32 process_pid; i32 process_tgid; }
/// ```
const EVENT_WHAT: usize = 0;
const EVENT_DATA: usize = 16;

/// The kernel's buffer for our socket: a burst of process starts must not
/// overflow it (an overflow loses events, and is answered by a scan).
const RECEIVE_BUFFER: libc::c_int = 4 << 20;

/// How new processes are learnt of.
pub enum Source {
    /// Process events from the kernel, one per `execve`.
    Netlink(OwnedFd),
    /// The process list, compared with the one before.
    Poll {
        known: HashSet<Pid>,
        interval: Duration,
        /// When the list was last read.
        read_at: Instant,
    },
}

impl Source {
    /// The connector, or why it cannot be used.
    pub fn netlink() -> io::Result<Source> {
        // SAFETY: plain system calls on a socket this function owns; every
        // buffer passed is a local of the size given.
        unsafe {
            let fd = libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                NETLINK_CONNECTOR,
            );
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let size = RECEIVE_BUFFER;
            // SO_RCVBUFFORCE needs CAP_NET_ADMIN; SO_RCVBUF is capped.
            if libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUFFORCE,
                (&size as *const libc::c_int).cast(),
                4,
            ) != 0
            {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUF,
                    (&size as *const libc::c_int).cast(),
                    4,
                );
            }
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
            addr.nl_pid = 0; // the kernel assigns the port id
            addr.nl_groups = libc::CN_IDX_PROC;
            if libc::bind(
                fd.as_raw_fd(),
                (&addr as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // The request: nlmsghdr + cn_msg + the op (u32).
            let mut msg = [0u8; NLMSG_HDRLEN + CN_MSG_LEN + 4];
            let total = msg.len() as u32;
            msg[0..4].copy_from_slice(&total.to_ne_bytes());
            msg[4..6].copy_from_slice(&NLMSG_DONE.to_ne_bytes());
            msg[12..16].copy_from_slice(&(libc::getpid() as u32).to_ne_bytes());
            let cn = NLMSG_HDRLEN;
            msg[cn..cn + 4].copy_from_slice(&libc::CN_IDX_PROC.to_ne_bytes());
            msg[cn + 4..cn + 8].copy_from_slice(&libc::CN_VAL_PROC.to_ne_bytes());
            msg[cn + 16..cn + 18].copy_from_slice(&4u16.to_ne_bytes());
            let op = libc::PROC_CN_MCAST_LISTEN;
            msg[cn + CN_MSG_LEN..].copy_from_slice(&op.to_ne_bytes());
            let sent = libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0);
            if sent < 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(Source::Netlink(fd))
        }
    }

    /// The process-list scan; the processes running now are known (not
    /// new).
    pub fn poll(interval: Duration) -> Source {
        Source::Poll {
            known: ulp_process::all_pids().into_iter().collect(),
            interval,
            read_at: Instant::now(),
        }
    }

    /// "netlink" or "polling", for the log.
    pub fn name(&self) -> &'static str {
        match self {
            Source::Netlink(_) => "netlink process events",
            Source::Poll { .. } => "polling the process list",
        }
    }

    /// Waits at most `timeout` and returns the processes that have started
    /// a program since the last call (a poll reads the process list at most
    /// once an interval, and returns nothing in between).
    /// `Err(Lost)` when the kernel dropped events (its buffer overflowed):
    /// the caller scans instead.
    pub fn next(&mut self, timeout: Duration) -> Result<Vec<Pid>, Lost> {
        match self {
            Source::Netlink(fd) => read_events(fd, timeout),
            Source::Poll {
                known,
                interval,
                read_at,
            } => {
                let due = interval.saturating_sub(read_at.elapsed());
                std::thread::sleep(timeout.min(due));
                if read_at.elapsed() < *interval {
                    return Ok(Vec::new());
                }
                *read_at = Instant::now();
                let now: HashSet<Pid> = ulp_process::all_pids().into_iter().collect();
                let mut new: Vec<Pid> = now.difference(known).copied().collect();
                new.sort_unstable();
                *known = now;
                Ok(new)
            }
        }
    }
}

/// Events were lost.
#[derive(Debug)]
pub struct Lost;

fn read_events(fd: &OwnedFd, timeout: Duration) -> Result<Vec<Pid>, Lost> {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one pollfd, ours.
    let ready = unsafe { libc::poll(&mut pfd, 1, ms) };
    let mut out = Vec::new();
    if ready <= 0 {
        return Ok(out); // timeout, or a signal (EINTR): the caller looks at its flag
    }
    let mut lost = false;
    let mut buf = vec![0u8; 8192];
    loop {
        // SAFETY: the buffer is ours and its length is given.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENOBUFS) => {
                    lost = true;
                    continue;
                }
                Some(libc::EINTR) => continue,
                _ => break, // EAGAIN: all read
            }
        }
        parse_datagram(&buf[..n as usize], &mut out, &mut lost);
    }
    if lost {
        Err(Lost)
    } else {
        Ok(out)
    }
}

/// The exec events of one datagram (one or more netlink messages).
fn parse_datagram(mut data: &[u8], out: &mut Vec<Pid>, lost: &mut bool) {
    let u32_at = |d: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(d.get(at..at + 4)?.try_into().ok()?))
    };
    while data.len() >= NLMSG_HDRLEN {
        let Some(len) = u32_at(data, 0).map(|l| l as usize) else {
            return;
        };
        let kind = u16::from_ne_bytes([data[4], data[5]]);
        if len < NLMSG_HDRLEN || len > data.len() {
            return;
        }
        let payload = &data[NLMSG_HDRLEN..len];
        match kind {
            NLMSG_OVERRUN => *lost = true,
            NLMSG_NOOP | NLMSG_ERROR => {}
            _ => {
                if let Some(pid) = exec_of(payload) {
                    out.push(pid);
                }
            }
        }
        // Messages are aligned to 4 bytes.
        let next = (len + 3) & !3;
        data = data.get(next..).unwrap_or(&[]);
    }
}

/// The process of a `cn_msg` carrying a `PROC_EVENT_EXEC`.
fn exec_of(cn: &[u8]) -> Option<Pid> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(cn.get(at..at + 4)?.try_into().ok()?))
    };
    if u32_at(0)? != libc::CN_IDX_PROC || u32_at(4)? != libc::CN_VAL_PROC {
        return None;
    }
    let event = cn.get(CN_MSG_LEN..)?;
    let what = u32::from_ne_bytes(event.get(EVENT_WHAT..EVENT_WHAT + 4)?.try_into().ok()?);
    if what != libc::PROC_EVENT_EXEC {
        return None;
    }
    let tgid_at = EVENT_DATA + 4;
    let tgid = i32::from_ne_bytes(event.get(tgid_at..tgid_at + 4)?.try_into().ok()?);
    (tgid > 0).then(|| Pid::new(tgid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(what: u32, pid: i32, tgid: i32) -> Vec<u8> {
        let mut cn = Vec::new();
        cn.extend_from_slice(&libc::CN_IDX_PROC.to_ne_bytes());
        cn.extend_from_slice(&libc::CN_VAL_PROC.to_ne_bytes());
        cn.extend_from_slice(&[0; 8]); // seq, ack
        cn.extend_from_slice(&24u16.to_ne_bytes());
        cn.extend_from_slice(&[0; 2]);
        cn.extend_from_slice(&what.to_ne_bytes());
        cn.extend_from_slice(&[0; 12]); // cpu, timestamp
        cn.extend_from_slice(&pid.to_ne_bytes());
        cn.extend_from_slice(&tgid.to_ne_bytes());
        let mut msg = Vec::new();
        msg.extend_from_slice(&((NLMSG_HDRLEN + cn.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        msg.extend_from_slice(&[0; 10]);
        msg.extend_from_slice(&cn);
        msg
    }

    #[test]
    fn exec_events_give_the_process_others_nothing() {
        let mut data = event(libc::PROC_EVENT_EXEC, 12, 10);
        data.extend(event(libc::PROC_EVENT_FORK, 13, 13));
        data.extend(event(libc::PROC_EVENT_EXEC, 14, 14));
        let (mut out, mut lost) = (Vec::new(), false);
        parse_datagram(&data, &mut out, &mut lost);
        assert_eq!(out, vec![Pid::new(10), Pid::new(14)]);
        assert!(!lost);
        // A truncated message is ignored.
        let mut out = Vec::new();
        parse_datagram(&data[..30], &mut out, &mut lost);
        assert!(out.is_empty());
    }
}

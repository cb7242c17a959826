//! The host side of a container's terminal (specs/runtime.md RUN-30): raw mode on ferry's
//! own terminal, restored on every exit path, and a relay that copies keystrokes to the
//! pseudo-terminal's master, its output back, and the window size on SIGWINCH.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use std::thread::JoinHandle;

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
use nix::sys::termios::{cfmakeraw, tcgetattr, tcsetattr, SetArg, Termios};

use super::io_error;
use crate::Result;

/// Write end of the pipe the SIGWINCH handler signals on; -1 when none is installed.
static WINCH_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_winch(_: libc::c_int) {
    let fd = WINCH_PIPE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: write(2) is async-signal-safe; a full pipe just drops the byte.
        unsafe { libc::write(fd, [0u8].as_ptr().cast(), 1) };
    }
}

/// ferry's terminal in raw mode while this lives; dropping it restores the saved settings.
pub(crate) struct RawMode {
    /// A descriptor of its own, valid however long the caller keeps the one it passed.
    fd: OwnedFd,
    saved: Termios,
}

impl RawMode {
    /// Puts the terminal `fd` into raw mode; `None` if `fd` is not a terminal.
    pub(crate) fn enter(fd: BorrowedFd<'_>) -> Result<Option<RawMode>> {
        let saved = match tcgetattr(fd) {
            Ok(t) => t,
            Err(Errno::ENOTTY | Errno::EINVAL) => return Ok(None),
            Err(e) => return Err(io_error("tcgetattr", Path::new("terminal"), e.into())),
        };
        let mut raw = saved.clone();
        cfmakeraw(&mut raw);
        tcsetattr(fd, SetArg::TCSANOW, &raw)
            .map_err(|e| io_error("set raw mode", Path::new("terminal"), e.into()))?;
        let fd = fd
            .try_clone_to_owned()
            .map_err(|e| io_error("duplicate", Path::new("terminal"), e))?;
        Ok(Some(RawMode { fd, saved }))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(e) = tcsetattr(&self.fd, SetArg::TCSAFLUSH, &self.saved) {
            tracing::warn!("restoring the terminal: {e}");
        }
    }
}

/// The window size of terminal `fd`, if it is one.
pub(crate) fn window_size(fd: RawFd) -> Option<libc::winsize> {
    let mut ws: libc::winsize = unsafe { std::mem::zeroed() };
    // SAFETY: TIOCGWINSZ writes one winsize into `ws`.
    let ret = unsafe { libc::ioctl(fd, libc::TIOCGWINSZ, &mut ws) };
    (ret == 0 && (ws.ws_row > 0 || ws.ws_col > 0)).then_some(ws)
}

/// Copies between the container's pseudo-terminal and ferry's streams on a thread.
pub(crate) struct Relay {
    thread: Option<JoinHandle<()>>,
    winch: Option<(OwnedFd, SigAction)>,
}

impl Relay {
    /// Starts copying `input` to `master` and `master` to `output` until the container's
    /// side is closed, and the window size of `input` (if it is a terminal) to `master` on
    /// SIGWINCH.
    pub(crate) fn start(master: OwnedFd, input: OwnedFd, output: OwnedFd) -> Result<Relay> {
        let (winch_read, winch_write) =
            nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC | nix::fcntl::OFlag::O_NONBLOCK)
                .map_err(|e| io_error("pipe", Path::new("SIGWINCH"), e.into()))?;
        let tty_input = window_size(input.as_raw_fd()).is_some();
        let mut winch = None;
        if tty_input
            && WINCH_PIPE
                .compare_exchange(
                    -1,
                    winch_write.as_raw_fd(),
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                )
                .is_ok()
        {
            let action = SigAction::new(
                SigHandler::Handler(on_winch),
                SaFlags::SA_RESTART,
                SigSet::empty(),
            );
            // SAFETY: the handler only reads an atomic and calls write(2).
            match unsafe { sigaction(Signal::SIGWINCH, &action) } {
                Ok(old) => winch = Some((winch_write, old)),
                Err(e) => {
                    WINCH_PIPE.store(-1, Ordering::SeqCst);
                    return Err(io_error("install handler", Path::new("SIGWINCH"), e.into()));
                }
            }
        }
        let thread = std::thread::Builder::new()
            .name("ferry-tty".into())
            .spawn(move || copy_loop(&master, &input, &output, &winch_read))
            .map_err(|e| io_error("start thread", Path::new("terminal relay"), e))?;
        Ok(Relay {
            thread: Some(thread),
            winch,
        })
    }

    /// Waits until the container's side of the terminal is closed and everything it wrote
    /// has been copied out.
    pub(crate) fn finish(mut self) {
        if self.thread.take().is_some_and(|t| t.join().is_err()) {
            tracing::warn!("the terminal relay panicked");
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        if let Some((_, old)) = self.winch.take() {
            WINCH_PIPE.store(-1, Ordering::SeqCst);
            // SAFETY: restores the disposition that was in place before.
            if let Err(e) = unsafe { sigaction(Signal::SIGWINCH, &old) } {
                tracing::warn!("restoring the SIGWINCH handler: {e}");
            }
        }
    }
}

/// The relay's loop: ends when the master reports hang-up (every slave descriptor closed).
fn copy_loop(master: &OwnedFd, input: &OwnedFd, output: &OwnedFd, winch: &OwnedFd) {
    let mut buf = [0u8; 16 * 1024];
    let mut input_open = true;
    loop {
        let mut fds = vec![
            PollFd::new(master.as_fd(), PollFlags::POLLIN),
            PollFd::new(winch.as_fd(), PollFlags::POLLIN),
        ];
        if input_open {
            fds.push(PollFd::new(input.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) | Err(Errno::EINTR) => {}
            Err(e) => {
                tracing::warn!("terminal relay: poll: {e}");
                return;
            }
        }
        let ready = |fd: &PollFd| {
            fd.revents().is_some_and(|r| {
                r.intersects(PollFlags::POLLIN | PollFlags::POLLHUP | PollFlags::POLLERR)
            })
        };
        let (master_ready, winch_ready) = (ready(&fds[0]), ready(&fds[1]));
        let input_ready = input_open && ready(&fds[2]);
        drop(fds);
        if winch_ready {
            while nix::unistd::read(winch.as_raw_fd(), &mut buf).is_ok_and(|n| n > 0) {}
            if let Some(ws) = window_size(input.as_raw_fd()) {
                // SAFETY: TIOCSWINSZ reads one winsize.
                unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &ws) };
            }
        }
        if input_ready {
            match nix::unistd::read(input.as_raw_fd(), &mut buf) {
                Ok(0) | Err(_) => input_open = false,
                Ok(n) => {
                    if write_all(master, &buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
        if master_ready {
            match nix::unistd::read(master.as_raw_fd(), &mut buf) {
                // EIO: the last slave descriptor was closed.
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if write_all(output, &buf[..n]).is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// ferry's side of the container's streams when it has a terminal: `stdin`/`stdout` as
/// given, else copies of ferry's own.
pub(crate) fn host_streams(
    stdin: Option<OwnedFd>,
    stdout: Option<OwnedFd>,
) -> Result<(OwnedFd, OwnedFd)> {
    let own = |fd: RawFd| {
        // SAFETY: ferry's standard streams stay open for the whole process.
        unsafe { BorrowedFd::borrow_raw(fd) }
            .try_clone_to_owned()
            .map_err(|e| io_error("duplicate", Path::new("standard stream"), e))
    };
    let input = match stdin {
        Some(fd) => fd,
        None => own(0)?,
    };
    let output = match stdout {
        Some(fd) => fd,
        None => own(1)?,
    };
    Ok((input, output))
}

/// Receives the master descriptor the container sends over `socket`; `None` if the child
/// closed its end without sending one (it failed, and says why on its report pipe).
pub(crate) fn receive_master(socket: &OwnedFd) -> Result<Option<OwnedFd>> {
    use nix::sys::socket::{recvmsg, ControlMessageOwned, MsgFlags};
    let mut byte = [0u8; 1];
    let mut iov = [std::io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!(RawFd);
    let msg = loop {
        match recvmsg::<()>(
            socket.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Err(Errno::EINTR) => continue,
            other => break other,
        }
    }
    .map_err(|e| io_error("receive", Path::new("terminal master"), e.into()))?;
    let cmsgs = msg
        .cmsgs()
        .map_err(|e| io_error("receive", Path::new("terminal master"), e.into()))?;
    for cmsg in cmsgs {
        if let ControlMessageOwned::ScmRights(fds) = cmsg {
            if let Some(&fd) = fds.first() {
                // SAFETY: the kernel just installed this descriptor for us.
                return Ok(Some(unsafe {
                    <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd)
                }));
            }
        }
    }
    Ok(None)
}

/// The container's side, run in the child between clone and exec (only raw system calls):
/// opens a pseudo-terminal in the container's own `devpts` (`/dev/ptmx`), gives it the
/// window size `winsize`, sends the master to the parent over `socket`, makes the slave
/// the controlling terminal of a new session (owned by `uid`), and connects it to the
/// standard streams. Returns the errno of the step that failed.
///
/// # Safety
/// Only system calls on stack data; callable between clone and exec.
pub(crate) unsafe fn attach_in_container(
    socket: RawFd,
    winsize: Option<&libc::winsize>,
    uid: libc::uid_t,
) -> std::result::Result<(), i32> {
    let fail = || Err(Errno::last_raw());
    let master = libc::open(
        c"/dev/ptmx".as_ptr(),
        libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
    );
    if master < 0 {
        return fail();
    }
    let unlock: libc::c_int = 0;
    if libc::ioctl(master, libc::TIOCSPTLCK, &unlock) < 0 {
        return fail();
    }
    if let Some(ws) = winsize {
        if libc::ioctl(master, libc::TIOCSWINSZ, ws as *const libc::winsize) < 0 {
            return fail();
        }
    }
    let slave = libc::ioctl(master, libc::TIOCGPTPEER, libc::O_RDWR | libc::O_NOCTTY);
    if slave < 0 {
        return fail();
    }
    if libc::fchown(slave, uid, libc::gid_t::MAX) < 0 {
        return fail();
    }
    // One byte of data carrying the master as SCM_RIGHTS.
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u64; 4];
    let mut msg: libc::msghdr = std::mem::zeroed();
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = libc::CMSG_SPACE(std::mem::size_of::<libc::c_int>() as u32) as usize;
    let cmsg = libc::CMSG_FIRSTHDR(&msg);
    (*cmsg).cmsg_level = libc::SOL_SOCKET;
    (*cmsg).cmsg_type = libc::SCM_RIGHTS;
    (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<libc::c_int>() as u32) as usize;
    std::ptr::write_unaligned(libc::CMSG_DATA(cmsg).cast::<libc::c_int>(), master);
    if libc::sendmsg(socket, &msg, 0) < 0 {
        return fail();
    }
    libc::close(master);
    if libc::setsid() < 0 || libc::ioctl(slave, libc::TIOCSCTTY, 0) < 0 {
        return fail();
    }
    for target in 0..3 {
        if libc::dup2(slave, target) < 0 {
            return fail();
        }
    }
    if slave > 2 {
        libc::close(slave);
    }
    Ok(())
}

fn write_all(fd: &OwnedFd, mut bytes: &[u8]) -> nix::Result<()> {
    while !bytes.is_empty() {
        match nix::unistd::write(fd, bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(Errno::EINTR | Errno::EAGAIN) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

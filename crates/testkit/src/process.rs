//! Child processes that cannot outlive the process that started them.
//!
//! A test binary keeps its cluster in a static, which Rust never drops, and a
//! test run may end by Ctrl-C or SIGKILL. Two mechanisms make sure no JVM is
//! left behind:
//!
//! - On Linux every child is started with `PR_SET_PDEATHSIG = SIGKILL`, so
//!   the kernel kills it as soon as its parent is gone, however the parent
//!   died. The kernel ties that signal to the *thread* that forked, not to
//!   the process, so every child is forked by one thread that lives as long
//!   as the process does. Children also get a process group of their own, so
//!   a Ctrl-C in the terminal reaches this process, which then stops them in
//!   order, instead of reaching the JVMs directly.
//! - [`at_exit`] hooks run from a C `atexit` handler when the process exits
//!   normally (the test harness ends with `exit`), which gives a static
//!   cluster the chance to delete its files.

use std::io;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Mutex, Once, OnceLock};

type SpawnRequest = (Command, mpsc::Sender<io::Result<Child>>);

/// Starts `command` as a child that dies with this process.
pub(crate) fn spawn(mut command: Command) -> io::Result<Child> {
    tie_to_parent(&mut command);
    let (reply, answer) = mpsc::channel();
    spawner()
        .lock()
        .map_err(|_| io::Error::other("the spawner thread's queue is poisoned"))?
        .send((command, reply))
        .map_err(|_| io::Error::other("the spawner thread is gone"))?;
    answer
        .recv()
        .map_err(|_| io::Error::other("the spawner thread did not answer"))?
}

/// The queue of the one thread that forks every child.
fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (requests, queue) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testkit-spawner".into())
            .spawn(move || {
                for (mut command, reply) in queue {
                    let _ = reply.send(command.spawn());
                }
            })
            .expect("starting the spawner thread");
        Mutex::new(requests)
    })
}

#[cfg(target_os = "linux")]
fn tie_to_parent(command: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe system calls; it allocates nothing.
    unsafe {
        command.pre_exec(move || {
            if libc::setpgid(0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(io::Error::last_os_error());
            }
            // The parent may have died before the line above took effect.
            if libc::getppid() != parent {
                return Err(io::Error::from_raw_os_error(libc::ESRCH));
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn tie_to_parent(_command: &mut Command) {}

/// Whether `pid` names a live process.
pub(crate) fn is_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

type ExitHook = Box<dyn FnOnce() + Send>;

static EXIT_HOOKS: Mutex<Vec<ExitHook>> = Mutex::new(Vec::new());

/// Runs `hook` when the process exits through `exit` (the end of `main` or
/// of a test binary), even though statics are never dropped.
pub(crate) fn at_exit(hook: impl FnOnce() + Send + 'static) {
    static REGISTER: Once = Once::new();
    REGISTER.call_once(|| {
        // SAFETY: registering a plain `extern "C"` function.
        unsafe { libc::atexit(run_exit_hooks) };
    });
    if let Ok(mut hooks) = EXIT_HOOKS.lock() {
        hooks.push(Box::new(hook));
    }
}

extern "C" fn run_exit_hooks() {
    let hooks = match EXIT_HOOKS.try_lock() {
        Ok(mut hooks) => std::mem::take(&mut *hooks),
        Err(_) => return,
    };
    for hook in hooks {
        // A panic must not unwind into C.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook));
    }
}

static PANICKED: AtomicBool = AtomicBool::new(false);

/// Records from now on whether any thread panicked (a failed test), so that
/// a cluster stopped at exit knows to keep its logs.
pub(crate) fn watch_panics() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.store(true, Ordering::SeqCst);
            previous(info);
        }));
    });
}

/// Whether a panic happened since [`watch_panics`].
pub(crate) fn panicked() -> bool {
    PANICKED.load(Ordering::SeqCst)
}

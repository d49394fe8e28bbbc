//! A watchdog for a communicator whose operations have no timeout of their own (NCCL's).
//!
//! A rank stuck in an NCCL kernel (a peer that never comes, a network that hangs) blocks in
//! its stream's synchronisation forever while its heartbeat thread keeps it alive to the
//! coordinator: the whole job hangs. The watchdog is a thread that, every `poll`, asks the
//! communicator for an asynchronous error (`ncclCommGetAsyncError`) and checks how long the
//! operation under way has run; on an error, or past the timeout (`dist.collective_timeout_s`),
//! it aborts the communicator (`ncclCommAbort`), which ends the kernels and the wait with an
//! error. It fires once: the communicator cannot be used after an abort, so every later
//! operation fails at once with the same reason. torch.distributed's NCCL watchdog does the
//! same (`TORCH_NCCL_ASYNC_ERROR_HANDLING`).
//!
//! The communicator is behind [`Abortable`], so that tests hold the watchdog to its contract
//! with a stand-in that hangs as an NCCL kernel would.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the watchdog needs of a communicator. Both calls may come from the watchdog's thread
/// while another thread is blocked in an operation.
pub trait Abortable: Send + Sync + 'static {
    /// The communicator's asynchronous error, `None` while it is healthy.
    fn async_error(&self) -> Option<String>;
    /// Aborts the communicator: operations under way end with an error. Called at most once.
    fn abort(&self);
}

/// The watchdog of one communicator; its thread ends when it is dropped.
pub struct Watchdog {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    state: Mutex<State>,
    wake: Condvar,
}

#[derive(Default)]
struct State {
    /// The operation under way and when it started.
    armed: Option<(&'static str, Instant)>,
    /// Why the communicator was aborted, once it was.
    fired: Option<String>,
    stop: bool,
}

/// The watch over one operation; dropping it ends the watch.
pub struct Armed<'a>(&'a Watchdog);

impl Drop for Armed<'_> {
    fn drop(&mut self) {
        self.0.lock().armed = None;
    }
}

impl Watchdog {
    /// Watches `comm`: aborts it when an operation runs longer than `timeout` or it reports an
    /// asynchronous error, looking every `poll`.
    pub fn spawn(comm: Arc<dyn Abortable>, timeout: Duration, poll: Duration) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            wake: Condvar::new(),
        });
        let watched = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("weft-nccl-watchdog".into())
            .spawn(move || watch(&watched, comm.as_ref(), timeout, poll))
            .expect("spawning the watchdog thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Watches `op` until the returned guard drops; once the watchdog has fired, refuses with
    /// its reason (the communicator is gone).
    pub fn arm(&self, op: &'static str) -> Result<Armed<'_>, String> {
        let mut st = self.lock();
        if let Some(why) = &st.fired {
            return Err(why.clone());
        }
        st.armed = Some((op, Instant::now()));
        Ok(Armed(self))
    }

    /// Why the watchdog aborted the communicator, once it has.
    pub fn fired(&self) -> Option<String> {
        self.lock().fired.clone()
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The watchdog's thread: returns when stopped or once it has fired.
fn watch(shared: &Shared, comm: &dyn Abortable, timeout: Duration, poll: Duration) {
    let lock = || {
        shared
            .state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    };
    loop {
        {
            let st = lock();
            let (st, _) = shared
                .wake
                .wait_timeout_while(st, poll, |st| !st.stop)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if st.stop {
                return;
            }
        }
        // Asked without the lock: the call may take a while, and operations arm meanwhile.
        let error = comm.async_error();
        let mut st = lock();
        let why = match (error, st.armed) {
            (Some(e), _) => format!("NCCL reported an asynchronous error ({e})"),
            (None, Some((op, started))) if started.elapsed() > timeout => format!(
                "{op} did not finish within {timeout:?} (dist.collective_timeout_s): a peer is \
                 late, dead or stuck"
            ),
            _ => continue,
        };
        // Decided under the lock: an operation that arms from now on is refused.
        st.fired = Some(format!("{why}; the communicator was aborted"));
        drop(st);
        comm.abort();
        return;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A communicator whose operations hang until they are aborted, as an NCCL kernel whose
    /// peer never comes does.
    #[derive(Default)]
    struct StandIn {
        aborted: Mutex<bool>,
        woken: Condvar,
        aborts: AtomicUsize,
        error: Mutex<Option<String>>,
    }

    impl StandIn {
        /// An operation that needs `needs` to finish, or ends with an error when aborted.
        fn op(&self, needs: Duration) -> Result<(), &'static str> {
            let aborted = self.aborted.lock().unwrap();
            let (aborted, _) = self
                .woken
                .wait_timeout_while(aborted, needs, |a| !*a)
                .unwrap();
            if *aborted {
                Err("aborted")
            } else {
                Ok(())
            }
        }
    }

    impl Abortable for StandIn {
        fn async_error(&self) -> Option<String> {
            self.error.lock().unwrap().clone()
        }
        fn abort(&self) {
            self.aborts.fetch_add(1, Ordering::SeqCst);
            *self.aborted.lock().unwrap() = true;
            self.woken.notify_all();
        }
    }

    const TIMEOUT: Duration = Duration::from_millis(300);
    const POLL: Duration = Duration::from_millis(10);

    #[test]
    fn operations_within_the_timeout_are_left_alone() {
        let comm = Arc::new(StandIn::default());
        let dog = Watchdog::spawn(comm.clone(), TIMEOUT, POLL);
        for _ in 0..5 {
            let _armed = dog.arm("all-reduce").unwrap();
            comm.op(Duration::from_millis(100)).unwrap();
        }
        // Idle time between operations does not count.
        std::thread::sleep(TIMEOUT * 2);
        assert_eq!(dog.fired(), None);
        assert_eq!(comm.aborts.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_hung_operation_is_aborted_after_the_timeout_and_later_ones_refused() {
        let comm = Arc::new(StandIn::default());
        let dog = Watchdog::spawn(comm.clone(), TIMEOUT, POLL);
        let started = Instant::now();
        let result = {
            let _armed = dog.arm("all-reduce").unwrap();
            comm.op(Duration::from_secs(3600))
        };
        let took = started.elapsed();
        assert_eq!(result, Err("aborted"));
        assert!(took >= TIMEOUT && took < TIMEOUT * 4, "{took:?}");
        let why = dog.fired().unwrap();
        assert!(
            why.starts_with("all-reduce did not finish within 300ms"),
            "{why}"
        );
        assert_eq!(dog.arm("broadcast").err(), Some(why));
        std::thread::sleep(TIMEOUT);
        assert_eq!(comm.aborts.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn an_asynchronous_error_aborts_at_once() {
        let comm = Arc::new(StandIn::default());
        let dog = Watchdog::spawn(comm.clone(), Duration::from_secs(3600), POLL);
        *comm.error.lock().unwrap() = Some("ncclRemoteError".into());
        let started = Instant::now();
        let result = {
            let _armed = dog.arm("all-gather").unwrap();
            comm.op(Duration::from_secs(3600))
        };
        assert_eq!(result, Err("aborted"));
        assert!(started.elapsed() < Duration::from_secs(5));
        let why = dog.fired().unwrap();
        assert!(
            why.contains("asynchronous error (ncclRemoteError)"),
            "{why}"
        );
    }

    #[test]
    fn dropping_the_watchdog_ends_its_thread() {
        let comm = Arc::new(StandIn::default());
        let dog = Watchdog::spawn(comm.clone(), TIMEOUT, Duration::from_secs(3600));
        let started = Instant::now();
        drop(dog);
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(comm.aborts.load(Ordering::SeqCst), 0);
    }
}

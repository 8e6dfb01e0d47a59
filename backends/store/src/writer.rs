//! A writer thread with group commit, for the embedded stores: one thread owns what the
//! writes run on, takes the first queued write and every write that queued behind it,
//! runs them in order and makes them durable together (one sync of the log for the
//! batch), and only then answers them. So "answered" still means "durable", and a
//! burst of writes costs one sync, not one each; there is no pool of threads colliding
//! on the store's own locks.
//!
//! A write is [`Sync::Durable`] (an update, a registration) or [`Sync::Lazy`] (an
//! ack): a batch of lazy writes alone is not synced, only written to the log, which
//! is in the OS's page cache when the write is answered. A crash of the process keeps
//! it; a power loss may forget it, and the update it acknowledged is then delivered
//! once more, which devices tolerate. The next synced batch syncs it too.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;
use std::sync::{Mutex, PoisonError};
use std::thread::JoinHandle;

use tokio::sync::oneshot;

use crate::StoreError;

/// Writes run in one batch at most; the rest wait for the next one.
const MAX_BATCH: usize = 256;

/// Whether a write waits for the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// Synced (when the store syncs at all): what was answered survives a power loss.
    Durable,
    /// Never synced by itself (acks): survives a crash of the process.
    Lazy,
}

/// How a store runs and makes durable a batch of writes, on the writer thread.
pub trait Commit: Send + 'static {
    /// What each write runs on.
    type Target;

    /// Runs every write of `batch` in order ([`Job::run`] on each), then makes what
    /// they did durable, synced when `sync`. An error fails every write of the batch
    /// that had not failed by itself.
    fn commit(
        &mut self,
        batch: &mut [Box<dyn Job<Self::Target>>],
        sync: bool,
    ) -> Result<(), StoreError>;

    /// Called once, after the last batch, when the store closes.
    fn close(self) -> Result<(), StoreError>;
}

/// A queued write, type-erased so writes of every answer type share one queue.
pub trait Job<T>: Send {
    /// Runs the write on `target` and keeps its answer; says whether it succeeded (a
    /// panic is a failure).
    fn run(&mut self, target: &T) -> bool;

    /// Sends the kept answer, or `failed` when the batch could not be made durable.
    fn answer(self: Box<Self>, failed: Option<StoreError>);

    /// Whether it must be synced.
    fn synced(&self) -> bool;
}

/// A write `F` answering `A` to whoever waits on `reply`.
struct Write<A, F> {
    sync: Sync,
    write: Option<F>,
    answer: Option<Result<A, StoreError>>,
    reply: oneshot::Sender<Result<A, StoreError>>,
}

impl<T, A, F> Job<T> for Write<A, F>
where
    A: Send,
    F: FnOnce(&T) -> Result<A, StoreError> + Send,
{
    fn run(&mut self, target: &T) -> bool {
        let Some(write) = self.write.take() else {
            return false;
        };
        // A panicking write must not take the thread, and every later write, with it.
        let answer = catch_unwind(AssertUnwindSafe(|| write(target)))
            .unwrap_or_else(|_| Err(StoreError::Internal("a store write panicked".into())));
        let ok = answer.is_ok();
        self.answer = Some(answer);
        ok
    }

    fn answer(self: Box<Self>, failed: Option<StoreError>) {
        let answer = match (self.answer, failed) {
            // The write's own error says more than the batch's.
            (Some(Err(error)), _) => Err(error),
            (Some(Ok(_)), Some(failed)) | (None, Some(failed)) => Err(failed),
            (Some(Ok(answer)), None) => Ok(answer),
            (None, None) => Err(closed()),
        };
        // The caller may have given up waiting; nothing to do then.
        let _ = self.reply.send(answer);
    }

    fn synced(&self) -> bool {
        self.sync == Sync::Durable
    }
}

fn closed() -> StoreError {
    StoreError::Unavailable("the store is closed".into())
}

/// The queue of jobs running on `T`.
type Queue<T> = mpsc::Sender<Box<dyn Job<T>>>;

/// The handle on a writer thread running writes on `C::Target`.
pub struct Writer<C: Commit> {
    /// The queue to the thread; `None` once closed.
    queue: Mutex<Option<Queue<C::Target>>>,
    /// The thread; it answers how closing went.
    thread: Mutex<Option<JoinHandle<Result<(), StoreError>>>>,
}

impl<C: Commit> std::fmt::Debug for Writer<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Writer").finish_non_exhaustive()
    }
}

impl<C: Commit> Writer<C> {
    /// Starts the thread `name`, which commits through `committer`.
    pub fn start(name: &str, committer: C) -> Result<Self, StoreError> {
        let (queue, jobs) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(committer, jobs))
            .map_err(|e| StoreError::Unavailable(format!("cannot start {name}: {e}")))?;
        Ok(Writer {
            queue: Mutex::new(Some(queue)),
            thread: Mutex::new(Some(thread)),
        })
    }

    /// Queues `write`; the receiver answers once its batch is durable (or failed).
    pub fn submit<A, F>(&self, sync: Sync, write: F) -> oneshot::Receiver<Result<A, StoreError>>
    where
        A: Send + 'static,
        F: FnOnce(&C::Target) -> Result<A, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job: Box<dyn Job<C::Target>> = Box::new(Write {
            sync,
            write: Some(write),
            answer: None,
            reply,
        });
        let queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        match queue.as_ref() {
            Some(queue) => {
                if let Err(mpsc::SendError(job)) = queue.send(job) {
                    job.answer(None);
                }
            }
            None => job.answer(None),
        }
        answer
    }

    /// Runs `write` and waits for its answer.
    pub async fn write<A, F>(&self, sync: Sync, write: F) -> Result<A, StoreError>
    where
        A: Send + 'static,
        F: FnOnce(&C::Target) -> Result<A, StoreError> + Send + 'static,
    {
        self.submit(sync, write)
            .await
            .unwrap_or_else(|_| Err(closed()))
    }

    /// Lets the thread finish what is queued and close the committer; waits for it.
    /// Blocking; later writes answer "closed".
    pub fn close(&self) -> Result<(), StoreError> {
        drop(
            self.queue
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take(),
        );
        let thread = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        match thread {
            Some(thread) => thread
                .join()
                .unwrap_or_else(|_| Err(StoreError::Internal("the writer panicked".into()))),
            None => Ok(()),
        }
    }
}

impl<C: Commit> Drop for Writer<C> {
    /// A store dropped without `close` still ends its thread and closes what it
    /// wrote to before a new store may open it.
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// The thread: takes the first queued write and whatever queued behind it, commits
/// them together, answers them, and repeats until the queue is closed.
fn serve<C: Commit>(
    mut committer: C,
    jobs: mpsc::Receiver<Box<dyn Job<C::Target>>>,
) -> Result<(), StoreError> {
    let mut batch: Vec<Box<dyn Job<C::Target>>> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        batch.extend(jobs.try_iter().take(MAX_BATCH - 1));
        let sync = batch.iter().any(|job| job.synced());
        let failed = committer.commit(&mut batch, sync).err();
        for job in batch.drain(..) {
            job.answer(failed.clone());
        }
    }
    committer.close()
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::{Sender, channel};

    use super::*;

    /// A committer over a log of strings: each batch's writes land in `pending`, and
    /// move to `durable` on commit; `synced` records the sync flag of each batch.
    #[derive(Default)]
    struct Log {
        pending: Mutex<Vec<String>>,
        durable: Mutex<Vec<String>>,
        synced: Mutex<Vec<bool>>,
    }

    struct LogCommit(std::sync::Arc<Log>);

    impl Commit for LogCommit {
        type Target = Log;

        fn commit(
            &mut self,
            batch: &mut [Box<dyn Job<Log>>],
            sync: bool,
        ) -> Result<(), StoreError> {
            for job in batch {
                job.run(&self.0);
            }
            let mut pending = self.0.pending.lock().unwrap();
            self.0.durable.lock().unwrap().append(&mut pending);
            self.0.synced.lock().unwrap().push(sync);
            Ok(())
        }

        fn close(self) -> Result<(), StoreError> {
            Ok(())
        }
    }

    fn append(entry: &'static str) -> impl FnOnce(&Log) -> Result<usize, StoreError> {
        move |log| {
            log.pending.lock().unwrap().push(entry.into());
            Ok(log.durable.lock().unwrap().len())
        }
    }

    /// A writer whose first write holds the thread until `release` is sent, so the
    /// writes submitted meanwhile queue up behind it.
    fn held() -> (Writer<LogCommit>, std::sync::Arc<Log>, Sender<()>) {
        let shared = std::sync::Arc::new(Log::default());
        let writer = Writer::start("test-writer", LogCommit(shared.clone())).unwrap();
        let (release, held) = channel::<()>();
        let (started, running) = channel::<()>();
        drop(writer.submit(Sync::Durable, move |log: &Log| {
            started.send(()).unwrap();
            held.recv().unwrap();
            log.pending.lock().unwrap().push("first".into());
            Ok(())
        }));
        running.recv().unwrap();
        (writer, shared, release)
    }

    #[test]
    fn writes_queued_together_are_answered_after_one_commit() {
        let (writer, log, release) = held();
        let a = writer.submit(Sync::Lazy, append("a"));
        let b = writer.submit(Sync::Durable, append("b"));
        let c = writer.submit(Sync::Lazy, append("c"));
        release.send(()).unwrap();
        // Each saw only the first batch durable: they ran in the second, together.
        for answer in [a, b, c] {
            assert_eq!(answer.blocking_recv().unwrap().unwrap(), 1);
        }
        assert_eq!(*log.durable.lock().unwrap(), ["first", "a", "b", "c"]);
        // The second batch had a durable write, so it was synced.
        assert_eq!(*log.synced.lock().unwrap(), [true, true]);
        let lazy = writer.submit(Sync::Lazy, append("d"));
        assert_eq!(lazy.blocking_recv().unwrap().unwrap(), 4);
        assert_eq!(*log.synced.lock().unwrap(), [true, true, false]);
    }

    #[test]
    fn a_failing_or_panicking_write_fails_alone() {
        let (writer, log, release) = held();
        let failing = writer.submit(Sync::Durable, |_: &Log| {
            Err::<(), _>(StoreError::Conflict("no".into()))
        });
        let panicking = writer.submit(Sync::Durable, |_: &Log| -> Result<(), StoreError> {
            panic!("a write that panics")
        });
        let after = writer.submit(Sync::Durable, append("after"));
        release.send(()).unwrap();
        assert!(matches!(
            failing.blocking_recv().unwrap(),
            Err(StoreError::Conflict(_))
        ));
        assert!(matches!(
            panicking.blocking_recv().unwrap(),
            Err(StoreError::Internal(_))
        ));
        assert!(after.blocking_recv().unwrap().is_ok());
        assert_eq!(*log.durable.lock().unwrap(), ["first", "after"]);
    }

    #[test]
    fn close_finishes_queued_writes_and_refuses_later_ones() {
        let (writer, log, release) = held();
        let queued = writer.submit(Sync::Durable, append("queued"));
        release.send(()).unwrap();
        writer.close().unwrap();
        assert!(queued.blocking_recv().unwrap().is_ok());
        let late = writer.submit(Sync::Durable, append("late"));
        assert!(matches!(
            late.blocking_recv().unwrap(),
            Err(StoreError::Unavailable(_))
        ));
        assert_eq!(*log.durable.lock().unwrap(), ["first", "queued"]);
    }
}

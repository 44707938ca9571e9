//! The owner of weftd's long-lived tasks.
//!
//! Every task weftd keeps running (the lease keeper, the peer watch, each data-plane
//! reconciler, each firewall owner, the health server, the listeners) is started here and
//! watched while weftd runs. A task that returns or panics before shutdown is logged with
//! its name and why, then either restarted with backoff (its state can be rebuilt) or reported
//! to [`crate::daemon::run`], which stops weftd with a non-zero exit. The [`TaskBoard`] tells
//! `/healthz` which tasks are down or have made no progress for too long.

use std::collections::BTreeMap;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::FutureExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::backoff::Backoff;
use crate::health::Readiness;

/// A task's name: in logs, in `/healthz` and as the `task` label of
/// `weft_task_restarts_total`.
pub type TaskName = &'static str;

/// The `task` label of per-task metrics.
pub type TaskLabel = [(&'static str, &'static str); 1];

/// The error a task ends with.
pub type TaskError = Box<dyn std::error::Error + Send + Sync>;

/// What a task's run looks like to the supervisor.
pub type TaskFuture = BoxFuture<'static, Result<(), TaskError>>;

/// How one run of a task ended: its own result, or a panic.
type RunResult = Result<Result<(), TaskError>, TaskFailure>;

/// The first restart waits about this long; each further one twice as long.
const RESTART_BASE: Duration = Duration::from_secs(1);
/// The longest wait between restarts.
const RESTART_MAX: Duration = Duration::from_secs(30);
/// A task that ran this long before failing starts again from the shortest wait.
const STABLE_RUN: Duration = Duration::from_secs(60);
/// How long the tasks get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// What happens when a task ends before shutdown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OnFailure {
    /// Start it again after a backoff: its state can be rebuilt.
    Restart,
    /// Stop weftd with a non-zero exit, so that kubelet restarts it.
    Exit,
}

/// Why a task stopped before shutdown.
#[derive(Debug, thiserror::Error)]
pub enum TaskFailure {
    #[error("panicked: {0}")]
    Panicked(String),
    #[error("stopped before shutdown")]
    Returned,
    #[error("failed: {0}")]
    Failed(TaskError),
}

impl TaskFailure {
    fn from_panic(payload: Box<dyn std::any::Any + Send>) -> TaskFailure {
        TaskFailure::Panicked(panic_text(payload))
    }
}

/// The message a panic carried.
pub fn panic_text(payload: Box<dyn std::any::Any + Send>) -> String {
    match payload.downcast::<String>() {
        Ok(s) => *s,
        Err(payload) => match payload.downcast::<&'static str>() {
            Ok(s) => (*s).to_string(),
            Err(_) => "no message".to_string(),
        },
    }
}

/// How a thread ended.
#[derive(Debug, thiserror::Error)]
pub enum ThreadEnd {
    #[error("the {0} stopped")]
    Returned(&'static str),
    #[error("the {0} panicked: {1}")]
    Panicked(&'static str, String),
}

/// Wait for the thread `what` to end (checked once a second).
pub async fn thread_ended(handle: std::thread::JoinHandle<()>, what: &'static str) -> ThreadEnd {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    while !handle.is_finished() {
        tick.tick().await;
    }
    match handle.join() {
        Ok(()) => ThreadEnd::Returned(what),
        Err(payload) => ThreadEnd::Panicked(what, panic_text(payload)),
    }
}

/// A task that must not fail stopped weftd.
#[derive(Debug, thiserror::Error)]
#[error("task {task} stopped")]
pub struct FatalTask {
    pub task: TaskName,
    #[source]
    pub why: TaskFailure,
}

/// Resolves once `shutdown` turns true (never, if its sender is gone without that).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    if shutdown.wait_for(|stop| *stop).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// A task's progress, as it reports it: when it last moved, and how long it may take to move
/// again. `/healthz` fails when that time has passed. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Progress(Arc<Mutex<ProgressState>>);

#[derive(Clone, Copy, Debug, Default)]
struct ProgressState {
    last: Option<Instant>,
    /// When the next sign of progress is due; `None`: nothing is due.
    due: Option<Instant>,
}

impl Progress {
    /// Progressed now; the next sign is due within `bound`.
    pub fn expect_within(&self, bound: Duration) {
        let now = Instant::now();
        self.set(ProgressState {
            last: Some(now),
            due: Some(now + bound),
        });
    }

    /// Progressed now; the next sign is due at `at`.
    pub fn expect_by(&self, at: Instant) {
        self.set(ProgressState {
            last: Some(Instant::now()),
            due: Some(at),
        });
    }

    /// Progressed now; nothing is due until the task says so again.
    pub fn idle(&self) {
        self.set(ProgressState {
            last: Some(Instant::now()),
            due: None,
        });
    }

    /// How long past due the next sign of progress is; `None` while it is not.
    pub fn overdue(&self) -> Option<Duration> {
        let due = self.get().due?;
        let now = Instant::now();
        (now > due).then(|| now - due)
    }

    fn set(&self, state: ProgressState) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = state;
    }

    fn get(&self) -> ProgressState {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Where a task stands.
#[derive(Clone, Debug)]
enum TaskStatus {
    Running,
    /// Failed; starting again at `at`.
    Restarting {
        why: String,
        at: Instant,
    },
    /// Failed and not restarted (weftd is stopping).
    Failed(String),
    /// Done: its work is finished (a one-off task).
    Finished,
}

#[derive(Clone, Debug)]
struct BoardEntry {
    status: TaskStatus,
    progress: Option<Progress>,
}

/// Every supervised task's status and progress, for `/healthz`. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct TaskBoard(Arc<Mutex<BTreeMap<TaskName, BoardEntry>>>);

impl TaskBoard {
    fn with<T>(&self, f: impl FnOnce(&mut BTreeMap<TaskName, BoardEntry>) -> T) -> T {
        f(&mut self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }

    fn set(&self, name: TaskName, status: TaskStatus) {
        self.with(|b| {
            if let Some(e) = b.get_mut(name) {
                e.status = status;
            }
        });
    }

    /// What is wrong, in plain words, naming the task; `None` when every task that must be
    /// alive is and has progressed in time.
    pub fn problem(&self) -> Option<String> {
        let now = Instant::now();
        self.with(|b| {
            b.iter().find_map(|(name, e)| match &e.status {
                TaskStatus::Restarting { why, at } => Some(format!(
                    "task {name} is not running ({why}); restarting it in {:.1} s",
                    at.saturating_duration_since(now).as_secs_f64()
                )),
                TaskStatus::Failed(why) => Some(format!("task {name} is not running ({why})")),
                TaskStatus::Finished => None,
                TaskStatus::Running => {
                    let p = e.progress.as_ref()?.get();
                    let (last, due) = (p.last?, p.due?);
                    (now > due).then(|| {
                        format!(
                            "task {name} has made no progress for {} s (it was due {} s ago)",
                            now.duration_since(last).as_secs(),
                            now.duration_since(due).as_secs()
                        )
                    })
                }
            })
        })
    }
}

/// A task as handed to [`Supervisor::spawn`].
pub struct Task {
    pub name: TaskName,
    pub on_failure: OnFailure,
    /// A task whose work can be done (a one-off check): returning is not a failure.
    pub may_finish: bool,
    /// Its progress, when `/healthz` should watch it.
    pub progress: Option<Progress>,
    /// Starts one run of the task (again after each failure).
    pub start: Box<dyn FnMut() -> TaskFuture + Send>,
}

impl Task {
    /// A task restarted when it fails.
    pub fn restart<F, Fut>(name: TaskName, mut start: F) -> Task
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        Task {
            name,
            on_failure: OnFailure::Restart,
            may_finish: false,
            progress: None,
            start: Box::new(move || start().boxed()),
        }
    }

    /// A task whose failure stops weftd. It is started once.
    pub fn fatal<Fut>(name: TaskName, run: Fut) -> Task
    where
        Fut: Future<Output = Result<(), TaskError>> + Send + 'static,
    {
        let mut run = Some(run.boxed());
        Task {
            name,
            on_failure: OnFailure::Exit,
            may_finish: false,
            progress: None,
            start: Box::new(move || {
                run.take()
                    .unwrap_or_else(|| async { Err("started twice".into()) }.boxed())
            }),
        }
    }

    /// The same task, watched for progress.
    pub fn with_progress(mut self, progress: Progress) -> Task {
        self.progress = Some(progress);
        self
    }

    /// The same task, allowed to finish its work and return.
    pub fn may_finish(mut self) -> Task {
        self.may_finish = true;
        self
    }
}

impl std::fmt::Debug for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Task")
            .field("name", &self.name)
            .field("on_failure", &self.on_failure)
            .field("may_finish", &self.may_finish)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<TaskName> = self.entries.iter().map(|e| e.task.name).collect();
        f.debug_struct("Supervisor")
            .field("tasks", &names)
            .finish_non_exhaustive()
    }
}

struct Entry {
    task: Task,
    backoff: Backoff,
    started: Instant,
    /// How many times it was started.
    runs: u32,
}

/// Owns the tasks; [`Supervisor::watch`] must be polled while weftd runs.
pub struct Supervisor {
    entries: Vec<Entry>,
    running: JoinSet<(usize, RunResult)>,
    board: TaskBoard,
    restarts: Family<TaskLabel, Counter>,
    ready: watch::Receiver<Readiness>,
    shutdown: watch::Receiver<bool>,
}

impl Supervisor {
    /// A supervisor counting restarts in `restarts` and showing its tasks on `board`.
    /// `ready` is what the test-only fault hook waits for.
    pub fn new(
        board: TaskBoard,
        restarts: Family<TaskLabel, Counter>,
        ready: watch::Receiver<Readiness>,
        shutdown: watch::Receiver<bool>,
    ) -> Supervisor {
        Supervisor {
            entries: Vec::new(),
            running: JoinSet::new(),
            board,
            restarts,
            ready,
            shutdown,
        }
    }

    /// Start `task` now.
    pub fn spawn(&mut self, task: Task) {
        if task.on_failure == OnFailure::Restart {
            // The series exists (at 0) from the start.
            let _ = self.restarts.get_or_create(&[("task", task.name)]);
        }
        self.board.with(|b| {
            b.insert(
                task.name,
                BoardEntry {
                    status: TaskStatus::Running,
                    progress: task.progress.clone(),
                },
            )
        });
        self.entries.push(Entry {
            task,
            backoff: Backoff::new(RESTART_BASE, RESTART_MAX),
            started: Instant::now(),
            runs: 0,
        });
        self.start(self.entries.len() - 1, Duration::ZERO);
    }

    fn start(&mut self, index: usize, delay: Duration) {
        let entry = &mut self.entries[index];
        let name = entry.task.name;
        let run = (entry.task.start)();
        let fault = crate::fault::trigger(name, entry.runs, self.ready.clone());
        entry.runs += 1;
        let board = self.board.clone();
        let progress = entry.task.progress.clone();
        let mut shutdown = self.shutdown.clone();
        self.running.spawn(async move {
            if !delay.is_zero() {
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = stopped(&mut shutdown) => return (index, Ok(Ok(()))),
                }
                board.set(name, TaskStatus::Running);
            }
            if let Some(p) = progress {
                p.idle();
            }
            let run = async move {
                tokio::select! {
                    result = run => result,
                    () = fault => panic!("injected fault in task {name}"),
                }
            };
            let result = AssertUnwindSafe(run)
                .catch_unwind()
                .await
                .map_err(TaskFailure::from_panic);
            (index, result)
        });
        self.entries[index].started = Instant::now() + delay;
    }

    /// Watch the tasks: log each one that stops, restart those that may be restarted.
    /// Returns when a task whose failure stops weftd has failed; never returns otherwise.
    /// Cancel-safe (each ending is handled before the next await).
    pub async fn watch(&mut self) -> FatalTask {
        loop {
            let Some(joined) = self.running.join_next().await else {
                return std::future::pending().await;
            };
            let Ok((index, result)) = joined else {
                continue; // aborted: only at shutdown
            };
            if let Some(fatal) = self.ended(index, result) {
                return fatal;
            }
        }
    }

    /// One task ended with `result`: decide what follows.
    fn ended(&mut self, index: usize, result: RunResult) -> Option<FatalTask> {
        let stopping = *self.shutdown.borrow();
        let entry = &mut self.entries[index];
        let name = entry.task.name;
        let why = match result {
            Ok(Ok(())) if stopping || entry.task.may_finish => {
                self.board.set(name, TaskStatus::Finished);
                return None;
            }
            Ok(Ok(())) => TaskFailure::Returned,
            Ok(Err(e)) if stopping => {
                debug!(task = name, error = %e, "task ended with an error at shutdown");
                return None;
            }
            Ok(Err(e)) => TaskFailure::Failed(e),
            Err(panicked) => panicked,
        };
        if stopping {
            error!(task = name, "task {name} {why} while weftd was stopping");
            self.board.set(name, TaskStatus::Failed(why.to_string()));
            return None;
        }
        if entry.task.on_failure == OnFailure::Exit {
            error!(task = name, "task {name} {why}; weftd stops");
            self.board.set(name, TaskStatus::Failed(why.to_string()));
            return Some(FatalTask { task: name, why });
        }
        if entry.started.elapsed() >= STABLE_RUN {
            entry.backoff.reset();
        }
        let delay = entry.backoff.next_delay();
        error!(
            task = name,
            retry_in_ms = delay.as_millis() as u64,
            "task {name} {why}; restarting it in {:.1} s",
            delay.as_secs_f64()
        );
        self.restarts.get_or_create(&[("task", name)]).inc();
        self.board.set(
            name,
            TaskStatus::Restarting {
                why: why.to_string(),
                at: Instant::now() + delay,
            },
        );
        self.start(index, delay);
        None
    }

    /// After a fatal failure: stop every task now (the lease and the kernel state stay).
    pub fn abort(mut self) {
        self.running.abort_all();
    }

    /// At shutdown: give the tasks a moment to finish their current request, then stop the
    /// rest. Whatever ends badly meanwhile is logged.
    pub async fn stop(mut self) {
        let deadline = Instant::now() + SHUTDOWN_GRACE;
        loop {
            match tokio::time::timeout_at(deadline, self.running.join_next()).await {
                Ok(Some(Ok((index, result)))) => {
                    let _ = self.ended(index, result);
                }
                Ok(Some(Err(_))) => {}
                Ok(None) => return,
                Err(_) => break,
            }
        }
        let left: Vec<TaskName> = self.board.with(|b| {
            b.iter()
                .filter(|(_, e)| matches!(e.status, TaskStatus::Running))
                .map(|(n, _)| *n)
                .collect()
        });
        warn!(
            tasks = %left.join(","),
            "tasks still running {} s after the shutdown signal; stopping them",
            SHUTDOWN_GRACE.as_secs()
        );
        self.running.abort_all();
        info!("all tasks stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn supervisor() -> (Supervisor, TaskBoard, Family<TaskLabel, Counter>) {
        let board = TaskBoard::default();
        let restarts = Family::default();
        let (_ready_tx, ready) = watch::channel(Readiness::Ready);
        let (_stop_tx, stop) = watch::channel(false);
        // The senders may go: a closed shutdown channel reads as "not stopping".
        let sup = Supervisor::new(board.clone(), restarts.clone(), ready, stop);
        (sup, board, restarts)
    }

    #[tokio::test(start_paused = true)]
    async fn a_panicking_task_is_logged_restarted_with_backoff_and_counted() {
        let logs = crate::logging::Captured::start();
        let (mut sup, board, restarts) = supervisor();
        let runs = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let seen = runs.clone();
        sup.spawn(Task::restart("flaky", move || {
            let n = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                if n == 0 {
                    panic!("boom");
                }
                std::future::pending::<()>().await;
                Ok(())
            }
        }));
        let watched = tokio::time::timeout(Duration::from_secs(5), sup.watch()).await;
        assert!(watched.is_err(), "a restartable task is never fatal");
        assert_eq!(runs.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(restarts.get_or_create(&[("task", "flaky")]).get(), 1);
        assert_eq!(board.problem(), None);
        let text = logs.text();
        assert_eq!(
            text.matches("task flaky panicked: boom; restarting it in")
                .count(),
            1,
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn health_names_a_task_waiting_to_restart() {
        let (mut sup, board, _) = supervisor();
        sup.spawn(Task::restart("broken", || async {
            Err::<(), TaskError>("no netlink socket".into())
        }));
        let _ = tokio::time::timeout(Duration::from_millis(10), sup.watch()).await;
        let problem = board.problem().expect("a problem");
        assert!(
            problem.starts_with(
                "task broken is not running (failed: no netlink socket); restarting it in"
            ),
            "{problem}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_fatal_task_that_returns_is_reported() {
        let (mut sup, board, _) = supervisor();
        sup.spawn(Task::fatal("keeper", async { Ok(()) }));
        let fatal = sup.watch().await;
        assert_eq!(fatal.why.to_string(), "stopped before shutdown");
        assert_eq!(
            board.problem().as_deref(),
            Some("task keeper is not running (stopped before shutdown)")
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_task_without_progress_for_longer_than_its_bound_fails_health() {
        let (mut sup, board, _) = supervisor();
        let progress = Progress::default();
        let p = progress.clone();
        sup.spawn(
            Task::restart("stuck", move || {
                let p = p.clone();
                async move {
                    p.expect_within(Duration::from_secs(90));
                    std::future::pending::<()>().await;
                    Ok(())
                }
            })
            .with_progress(progress),
        );
        tokio::time::sleep(Duration::from_secs(60)).await;
        assert_eq!(board.problem(), None);
        tokio::time::sleep(Duration::from_secs(40)).await;
        assert_eq!(
            board.problem().as_deref(),
            Some("task stuck has made no progress for 100 s (it was due 10 s ago)")
        );
    }
}

//! The async runtime a host runs on.

/// A tokio runtime with `worker_threads` workers: 0 for one per core, 1 for a current-thread
/// runtime (every task on the calling thread: no cross-thread hand-off per message, one core).
pub fn build(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    match worker_threads {
        0 => tokio::runtime::Runtime::new(),
        1 => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        n => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n)
            .enable_all()
            .build(),
    }
}

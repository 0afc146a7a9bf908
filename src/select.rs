//! Waiting on what may not exist: the `tokio::select!` arms of the supervisor and the guest
//! relay wait on an optional future or deadline, which is pending forever when absent.

use std::future::{Future, pending};
use std::pin::Pin;

pub type Boxed<T> = Pin<Box<dyn Future<Output = T>>>;

pub async fn maybe<T>(f: &mut Option<Boxed<T>>) -> T {
    match f {
        Some(f) => f.as_mut().await,
        None => pending().await,
    }
}

pub async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => pending().await,
    }
}

/// The next tick of an optional interval; pending forever without one.
pub async fn tick(interval: &mut Option<tokio::time::Interval>) {
    match interval {
        Some(i) => {
            i.tick().await;
        }
        None => pending().await,
    }
}

//! NSTART (RFC 7252 §4.7): at most NSTART outstanding interactions with one server. An
//! interaction is outstanding from the request's first transmission until its response
//! (or failure). Requests beyond that wait in the server's queue, first come first served
//! (tokio's semaphore is fair); servers do not wait for one another, so one dead device
//! cannot stall the others.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Idle queues are swept when the table reaches this many servers.
const SWEEP_AT: usize = 256;

#[derive(Debug, Default)]
pub(crate) struct Queues {
    servers: Mutex<HashMap<SocketAddr, Arc<Semaphore>>>,
}

/// Held while an interaction is outstanding; dropping it lets the next request go.
#[derive(Debug)]
pub(crate) struct Permit(#[allow(dead_code)] OwnedSemaphorePermit);

impl Queues {
    /// Waits for the server's turn. Cancel-safe: dropping the future leaves the queue.
    pub async fn acquire(&self, peer: SocketAddr, nstart: usize) -> Permit {
        let sem = {
            let mut map = self.servers.lock().expect("queue table poisoned");
            if map.len() >= SWEEP_AT && !map.contains_key(&peer) {
                // Nobody holds or waits for a semaphore whose only reference is the map's.
                map.retain(|_, s| Arc::strong_count(s) > 1);
            }
            map.entry(peer)
                .or_insert_with(|| Arc::new(Semaphore::new(nstart.max(1))))
                .clone()
        };
        // The semaphore is never closed.
        Permit(sem.acquire_owned().await.expect("queue semaphore closed"))
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.servers.lock().unwrap().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[tokio::test(start_paused = true)]
    async fn one_outstanding_per_server_in_order_and_servers_independent() {
        let q = Arc::new(Queues::default());
        let p1 = q.acquire(addr(1), 1).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..3 {
            let (q, order) = (q.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _p = q.acquire(addr(1), 1).await;
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }));
            tokio::task::yield_now().await; // queue them in order
        }
        // Another server is not held up.
        let other = tokio::time::timeout(Duration::from_millis(1), q.acquire(addr(2), 1)).await;
        assert!(other.is_ok());
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(order.lock().unwrap().is_empty(), "all wait for the first");
        drop(p1);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
    }

    #[tokio::test]
    async fn idle_queues_are_swept() {
        let q = Queues::default();
        for port in 0..(SWEEP_AT as u16 + 10) {
            drop(q.acquire(addr(port), 1).await);
        }
        assert!(q.len() < SWEEP_AT);
    }
}

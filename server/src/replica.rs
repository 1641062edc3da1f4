//! What a replica knows about its peers: the live replicas, where each cluster was last
//! seen held, the leases it took for clusters being created, and the one-at-a-time
//! guard on taking leases. The decisions (route a request, keep and take leases) are the
//! service's (`Service::route`, `Service::keep_leases`).

use crate::lease::{preferred, HeldLeases, Leases, Replica};
use crate::store::LeaseToken;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

/// Where a request for a cluster goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This replica holds the cluster (or the cluster does not exist: the handler says
    /// 404), or the service runs alone.
    Local,
    /// Another replica holds it: forward the request there.
    Forward(Replica),
    /// Nobody can serve it right now (a takeover is under way, the database is
    /// unreachable): answer 503 with `Retry-After`.
    Unavailable {
        /// Why, for the client.
        message: String,
        /// When to try again.
        retry_after: Duration,
    },
}

/// Replication state of one replica (see the module doc).
#[derive(Debug)]
pub struct Replication {
    leases: Arc<dyn Leases>,
    live: RwLock<Vec<Replica>>,
    /// Leases taken for clusters a `PUT` is creating, and when.
    creating: Mutex<HashMap<String, (LeaseToken, Instant)>>,
    /// Where clusters were last seen held, until when.
    routes: Mutex<HashMap<String, (Replica, Instant)>>,
    /// Held while a lease is taken and its cluster rebuilt, so two requests for one
    /// cluster never take its lease twice (the second grant would fence the first).
    pub(crate) acquiring: tokio::sync::Mutex<()>,
}

/// Longest a cluster's holder is remembered without asking the database again.
const ROUTE_MEMORY: Duration = Duration::from_secs(1);

impl Replication {
    /// Replication over `leases`; this replica counts as the only live one until the
    /// first heartbeat.
    pub fn new(leases: Arc<dyn Leases>) -> Self {
        let me = leases.replica().clone();
        Self {
            leases,
            live: RwLock::new(vec![me]),
            creating: Mutex::default(),
            routes: Mutex::default(),
            acquiring: tokio::sync::Mutex::new(()),
        }
    }

    /// The lease operations.
    pub fn leases(&self) -> &dyn Leases {
        &*self.leases
    }

    /// This replica.
    pub fn me(&self) -> &Replica {
        self.leases.replica()
    }

    /// Records the live replicas a heartbeat returned.
    pub fn set_live(&self, live: Vec<Replica>) {
        *self.live.write().unwrap() = live;
    }

    /// Stops counting `replica` as live (it did not answer); the next heartbeat says
    /// again whether it is.
    pub fn drop_live(&self, replica: &str) {
        if replica != self.me().id {
            self.live.write().unwrap().retain(|r| r.id != replica);
        }
    }

    /// The live replica that should decide `cluster` (see [`preferred`]).
    pub fn preferred(&self, cluster: &str) -> Option<Replica> {
        preferred(cluster, &self.live.read().unwrap()).cloned()
    }

    /// Whether this replica is the one that should decide `cluster`.
    pub fn preferred_is_me(&self, cluster: &str) -> bool {
        self.preferred(cluster)
            .is_none_or(|replica| replica.id == self.me().id)
    }

    /// The holder of `cluster` seen lately, if any.
    pub fn cached_route(&self, cluster: &str) -> Option<Replica> {
        let mut routes = self.routes.lock().unwrap();
        match routes.get(cluster) {
            Some((replica, until)) if *until > Instant::now() => Some(replica.clone()),
            Some(_) => {
                routes.remove(cluster);
                None
            }
            None => None,
        }
    }

    /// Remembers that `holder` holds `cluster` for `remaining` more (at most a second).
    pub fn remember_route(&self, cluster: &str, holder: Replica, remaining: Duration) {
        let until = Instant::now() + remaining.min(ROUTE_MEMORY);
        self.routes
            .lock()
            .unwrap()
            .insert(cluster.to_string(), (holder, until));
    }

    /// Forgets where `cluster` is held (its holder did not answer).
    pub fn forget_route(&self, cluster: &str) {
        self.routes.lock().unwrap().remove(cluster);
    }

    /// Records a lease taken (asked for at `asked`) for a cluster being created.
    pub fn creating(&self, cluster: &str, token: LeaseToken, asked: Instant) {
        self.creating
            .lock()
            .unwrap()
            .insert(cluster.to_string(), (token, asked));
    }

    /// Takes the lease recorded for the creation of `cluster`, and when it was asked for.
    pub fn take_creating(&self, cluster: &str) -> Option<(LeaseToken, Instant)> {
        self.creating.lock().unwrap().remove(cluster)
    }

    /// Leases taken for creations: those younger than `max_age` (to renew), and the
    /// older ones, removed (their `PUT` never came through: to give up).
    pub fn creating_leases(&self, max_age: Duration) -> (HeldLeases, HeldLeases) {
        let mut creating = self.creating.lock().unwrap();
        let (mut young, mut old) = (Vec::new(), Vec::new());
        creating.retain(|cluster, (token, since)| {
            let keep = since.elapsed() < max_age;
            if keep { &mut young } else { &mut old }.push((cluster.clone(), *token));
            keep
        });
        (young, old)
    }
}

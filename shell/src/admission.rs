//! The node-wide admission counts every worker's hub shares.

use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use switchboard_core::{Admission, AdmissionTable, Refusal};

/// One [`AdmissionTable`] for the whole node, lent to each hub. Admission is a few map
/// operations per connection (never per message), so one short lock serves every worker and
/// makes the limits exact: a check and its count happen together for the node.
#[derive(Debug, Clone)]
pub struct SharedAdmission(Arc<Mutex<AdmissionTable>>);

impl SharedAdmission {
    /// Shares `table` among the hubs given a clone of this handle.
    pub fn new(table: AdmissionTable) -> Self {
        Self(Arc::new(Mutex::new(table)))
    }

    fn lock(&self) -> MutexGuard<'_, AdmissionTable> {
        // The table's methods do not panic halfway; a worker that panicked elsewhere while
        // holding the lock left it whole.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Admission for SharedAdmission {
    fn begin_handshake(&mut self, client: Option<IpAddr>, now: Instant) -> Result<usize, Refusal> {
        self.lock().begin_handshake(client, now)
    }

    fn end_handshake(&mut self, client: Option<IpAddr>) {
        self.lock().end_handshake(client);
    }

    fn open(&mut self, client: IpAddr, now: Instant) -> Result<(), Refusal> {
        self.lock().open(client, now)
    }

    fn close(&mut self, client: IpAddr) {
        self.lock().close(client);
    }

    fn open_app(&mut self, app: usize, max: usize) -> bool {
        self.lock().open_app(app, max)
    }

    fn close_app(&mut self, app: usize) {
        self.lock().close_app(app);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;
    use switchboard_core::Config;

    /// Eight threads race for five places: exactly five win, whatever the interleaving.
    #[test]
    fn racing_workers_admit_exactly_the_limit() {
        let config = Config::from_toml("[limits]\nmax_connections = 5\n").expect("valid");
        let shared = SharedAdmission::new(AdmissionTable::new(&config.limits));
        let now = Instant::now();
        let ip: IpAddr = [10, 0, 0, 1].into();
        let wins: usize = (0..8)
            .map(|_| {
                let mut handle = shared.clone();
                thread::spawn(move || (0..4).filter(|_| handle.open(ip, now).is_ok()).count())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap_or(0))
            .sum();
        assert_eq!(wins, 5);
        assert_eq!(shared.lock().connections(), 5);
    }
}

//! Fanout exchange: a message goes to every bound destination; keys are ignored.

use super::Destination;

#[derive(Debug, Default)]
pub struct FanoutRoutes {
    /// One entry per binding (see `DirectRoutes`); the vhost deduplicates after routing.
    destinations: Vec<Destination>,
}

impl FanoutRoutes {
    pub fn bind(&mut self, destination: Destination) {
        self.destinations.push(destination);
    }

    pub fn unbind(&mut self, destination: &Destination) {
        if let Some(at) = self.destinations.iter().position(|d| d == destination) {
            self.destinations.swap_remove(at);
        }
    }

    pub fn route(&self, out: &mut impl FnMut(&Destination)) {
        self.destinations.iter().for_each(out);
    }
}

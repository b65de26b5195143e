//! Direct exchange: a message goes to the destinations bound with exactly its routing key.

use std::collections::HashMap;

use ferrymq_wire::ShortStr;

use super::Destination;

#[derive(Debug, Default)]
pub struct DirectRoutes {
    /// One entry per binding: the same destination may appear once per distinct argument
    /// table it was bound with, so unbinding one leaves the others routing.
    by_key: HashMap<ShortStr, Vec<Destination>>,
}

impl DirectRoutes {
    pub fn bind(&mut self, destination: Destination, routing_key: &ShortStr) {
        self.by_key
            .entry(routing_key.clone())
            .or_default()
            .push(destination);
    }

    pub fn unbind(&mut self, destination: &Destination, routing_key: &ShortStr) {
        if let Some(destinations) = self.by_key.get_mut(routing_key.as_str()) {
            if let Some(at) = destinations.iter().position(|d| d == destination) {
                destinations.swap_remove(at);
            }
            if destinations.is_empty() {
                self.by_key.remove(routing_key.as_str());
            }
        }
    }

    pub fn route(&self, routing_key: &str, out: &mut impl FnMut(&Destination)) {
        if let Some(destinations) = self.by_key.get(routing_key) {
            destinations.iter().for_each(out);
        }
    }
}

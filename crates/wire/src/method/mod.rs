//! AMQP methods: one struct per method of every class in the spec, the
//! `Method` enum over them, and the spec's constants, all generated from
//! `amqp0-9-1.json` by `crates/wire/gen/generate.py` (see generated.rs).
//!
//! ```text
//! method frame payload:
//! +-------------+--------------+-------------------------------------+
//! | class-id u16| method-id u16| arguments in spec order             |
//! +-------------+--------------+-------------------------------------+
//! ```
//!
//! Arguments use the primitive layouts drawn in cursor.rs. Consecutive `bit`
//! arguments share one octet, first bit in the lowest position, at most 8
//! per octet; any other argument ends the run. Field names are the spec's in
//! snake_case, with `type` spelled `kind`.

mod generated;

pub use generated::*;

#[cfg(test)]
pub(crate) mod arbitrary;
#[cfg(test)]
mod oracle;
#[cfg(test)]
mod tests;

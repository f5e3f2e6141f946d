//! Native HA (`HA_MODE=native`): streaming replication with manual failover. A replica clones
//! and follows its primary (`replica`), members ask each other who they are (`member`), a node
//! refuses to become a second writable primary or to lose acknowledged commits (`fence`),
//! promotion goes to a new timeline (`promote`), a primary hands its role to a replica in a
//! switchover (`handover`, with the command's half in `switchover`), and a running replica keeps its slot on the
//! primary (`slot_keeper`). `auto` decides between primary and replica at start for a
//! StatefulSet pod.

pub mod auto;
pub mod fence;
pub mod handover;
pub mod promote;
pub mod replica;
pub mod slot_keeper;
pub mod switchover;

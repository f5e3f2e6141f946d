//! PID 1: the children, the signals and the privileges. `supervise` starts, forwards signals
//! to, reaps and stops children; `privileges` drops root for the service account. At the
//! bottom: it knows nothing of PostgreSQL but the one setting it is given.

pub mod privileges;
pub mod supervise;

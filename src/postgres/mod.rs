//! PostgreSQL plumbing: finding and running the tools (`server`, `step`), servers of our own
//! before the real start (`single_user`, `tempserver`), the running server seen from its
//! `postmaster.pid` (`local`), what it reports (`observe`) and how healthy that is
//! (`health`), reaching another member (`member`, and as the superuser: `admin`), and running
//! pgBackRest (`backrest`). No decision about roles lives here.

pub mod admin;
pub mod backrest;
pub mod health;
pub mod local;
pub mod member;
pub mod observe;
pub mod server;
pub mod single_user;
pub mod step;
pub mod tempserver;

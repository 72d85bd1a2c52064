//! workhost's integration tests: one binary, one module per surface.

mod capi;
mod chaos;
mod cli_store;
mod clock;
mod config;
mod dashboard;
mod device;
mod edge;
mod engine_patch;
mod examples;
mod exec_cli;
mod files;
mod guides;
mod hostile;
mod hosts;
mod http;
mod languages;
mod load;
mod ops_api;
mod otlp;
/// The PostgreSQL store's SQL, checked against a real server by `postgres`.
#[path = "../../host/src/store/postgres/sql.rs"]
mod pg_sql;
mod postgres;
mod scaleout;
mod scheduler;
mod schedules;
mod stops;
mod store;
mod versions;

//! End-to-end tests: real `fallow` processes (coordinator, workers, CLI) on 127.0.0.1 with
//! real WASM projects. Each test gets its own temporary directory and ports.

mod harness;
// The throwaway PostgreSQL cluster of the store's tests, shared rather than copied.
#[allow(dead_code)]
#[path = "../../coordinator/src/store/testpg.rs"]
mod testpg;

mod adversary;
mod auth;
mod backup;
mod browser;
mod chaos;
mod checkpoint;
mod control;
mod dashboard;
mod data;
mod demo;
mod deployment;
mod diskfull;
mod failover;
mod faults;
mod follow;
mod garbage;
mod gossip;
mod hostile;
mod limits;
mod local;
mod partition;
mod postgres;
mod primes;
mod project_control;
mod rest;
mod shares;
mod signed;
mod stuck;
mod templates;
mod tls;
mod truth;
mod volunteer;
mod volunteer_page;
mod walkthrough;

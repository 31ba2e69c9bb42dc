//! End-to-end tests: real `fallow` processes (coordinator, workers, CLI) on 127.0.0.1 with
//! real WASM projects. Each test gets its own temporary directory and ports.

mod harness;

mod adversary;
mod auth;
mod chaos;
mod checkpoint;
mod control;
mod dashboard;
mod demo;
mod diskfull;
mod faults;
mod garbage;
mod gossip;
mod hostile;
mod limits;
mod local;
mod partition;
mod primes;
mod rest;
mod shares;
mod signed;
mod stuck;
mod templates;
mod tls;
mod truth;

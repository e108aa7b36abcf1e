//! The ROBERT population simulator (real Apps against a real server, measured against ground truth).
//!
//! Not built yet: this crate holds no code until the simulator issue lands.

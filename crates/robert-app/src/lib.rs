//! The App-side SDK of ROBERT (registration, HELLO broadcast and collection, declaration, ESR).
//!
//! Not built yet: this crate holds no code until the App SDK issue lands.

//! `discoverforwarder` (being written).

//! `grpc` (being written).

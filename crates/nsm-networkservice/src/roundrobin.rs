//! `roundrobin` (being written).

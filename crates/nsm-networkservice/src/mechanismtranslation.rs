//! `mechanismtranslation` (being written).
